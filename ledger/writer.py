"""The single writer: one thread, stdlib sqlite3, many queued appends per durable commit.

Callers canonicalise their payload on their own thread and enqueue it; the writer drains the
queue, opens `BEGIN IMMEDIATE` (which serialises writers across processes), reads the head,
hashes and inserts the whole batch with its projection updates, and commits once. A crash at any
point leaves either the whole batch or nothing (SQLite's journal), so no half-written entry can
exist. Waiters are released after the commit: an acknowledged append is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from ledger import chain
from ledger.entry import Entry, Head
from ledger.errors import LedgerClosed, LedgerError, StorageError, StorageFull
from ledger.merkle import CompactRange
from ledger.projections import PROJECTED_TYPES, Projector

MAX_BATCH = 4096
#: in place when the row exists (REPLACE would delete and re-insert it through every index)
UPSERT_SESSION = (
    "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(session_id) DO UPDATE SET "
    "task_id = excluded.task_id, status = excluded.status, parent_session_id = excluded.parent_session_id, "
    "root_session_id = excluded.root_session_id, ended_at = excluded.ended_at, updated_seq = excluded.updated_seq, "
    "state = excluded.state"
)
_STOP = object()


class Pending:
    """One queued append and the means to tell its caller how it went."""

    __slots__ = (
        "build",
        "data",
        "effect",
        "entry",
        "error",
        "future",
        "lock",
        "loop",
        "members",
        "payload",
        "stream",
        "type",
    )

    def __init__(self, stream: str, type_: str, payload: bytes, data: dict[str, Any] | None) -> None:
        self.stream = stream
        self.type = type_
        self.payload = payload
        self.data = data
        #: run inside the append transaction, before the entry is inserted (used by prune)
        self.effect: Callable[[sqlite3.Connection], None] | None = None
        #: computes (payload, data) inside the append transaction, from the projections as they are then
        self.build: Callable[[sqlite3.Connection, Any], tuple[bytes, dict[str, Any]]] | None = None
        #: a group: these appends commit in one transaction or not at all (the group itself is not an entry)
        self.members: list[Pending] | None = None
        self.entry: Entry | None = None
        self.error: BaseException | None = None
        self.lock: threading.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[Entry] | None = None


def translate(exc: sqlite3.Error, doing: str) -> LedgerError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "disk I/O" in text):
        return StorageFull(
            f"{doing}: the disk is full or failing ({text}); the transaction was rolled back and "
            "nothing was written"
        )
    return StorageError(f"{doing}: {text}")


class _CachedSessions:
    """SessionStore over the `sessions` table for one batch: reads through, writes at the end."""

    def __init__(self, conn: sqlite3.Connection, cache: dict[str, dict[str, Any] | None]) -> None:
        self.conn = conn
        self.cache = cache
        self.dirty: dict[str, int] = {}
        self.seq = 0

    def get(self, session_id: str) -> dict[str, Any] | None:
        if session_id not in self.cache:
            row = self.conn.execute(
                "SELECT state FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            self.cache[session_id] = None if row is None else json.loads(row[0])
        return self.cache[session_id]

    def put(self, state: dict[str, Any]) -> None:
        self.cache[state["session_id"]] = state
        self.dirty[state["session_id"]] = self.seq

    def flush_dirty(self) -> None:
        self.flush()
        self.dirty.clear()

    def flush(self) -> None:
        rows = []
        for sid, seq in self.dirty.items():
            st = self.cache[sid]
            assert st is not None
            rows.append(
                (
                    sid,
                    st["task_id"],
                    st["status"],
                    st.get("parent_session_id"),
                    st["root_session_id"],
                    st.get("ended_at"),
                    seq,
                    json.dumps(st, sort_keys=True, separators=(",", ":")),
                )
            )
        if rows:
            self.conn.executemany(UPSERT_SESSION, rows)


class Writer:
    """Owns the write connection; `submit` enqueues, the thread commits in batches."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        on_commit: Callable[[sqlite3.Connection, Head], None] | None = None,
    ) -> None:
        self._connect = connect
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._projector = Projector()
        self._stream_ids: dict[str, int] = {}
        #: session states known to this writer, valid while no other connection has committed
        self._session_cache: dict[str, dict[str, Any] | None] = {}
        self._data_version = -1
        self._closed = False
        #: whoever holds this uses the connection: the writer thread, or a caller committing its own append
        self._conn_lock = threading.Lock()
        #: the writer thread has taken work off the queue and not yet released it
        self._busy = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # -- caller side -------------------------------------------------------------------------
    def submit(self, pending: Pending) -> None:
        if self._closed:
            raise LedgerClosed("the ledger is closed; nothing more can be appended")
        self._queue.put(pending)

    def commit_here(self, pending: Pending) -> bool:
        """Commit `pending` on the caller's own thread when the writer is idle, sparing the two thread
        switches of a hand-off (a lone appender's latency); False when busy: `submit` it instead.

        The same batch code runs under the same lock, so durability and the chain are as for any batch.
        Callers that do not wait for their appends get no order between them either way.
        """
        if self._closed:
            raise LedgerClosed("the ledger is closed; nothing more can be appended")
        if self._busy or not self._queue.empty() or not self._conn_lock.acquire(blocking=False):
            return False
        try:
            if self._busy or not self._queue.empty():
                return False
            self._commit_batch([pending])
        finally:
            self._conn_lock.release()
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    # -- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.conn = self._connect()
        except BaseException as exc:  # surfaced to the constructor
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        stop = False
        while not stop:
            first = get()
            if first is _STOP:
                break
            self._busy = True
            batch = [first]
            try:
                while len(batch) < MAX_BATCH:
                    item = get_nowait()
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            with self._conn_lock:
                self._commit_batch(batch)
            self._busy = False
        # drain anything left after close (should not happen: submit refuses after close)
        self.conn.close()

    def _commit_batch(self, batch: list[Pending]) -> None:
        try:
            head = self._write(batch)
        except LedgerError as exc:
            if len(batch) > 1 and not isinstance(exc, StorageFull):
                for one in batch:  # isolate the item at fault; the others still commit
                    self._commit_batch([one])
                return
            for p in batch:
                p.error = exc
            self._release(batch)
            return
        self._release(batch)
        if self._on_commit is not None:
            with contextlib.suppress(Exception):  # a failed periodic checkpoint must not fail appends
                self._on_commit(self.conn, head)

    def _stream_id(self, name: str) -> int:
        sid = self._stream_ids.get(name)
        if sid is None:
            conn = self.conn
            conn.execute("INSERT OR IGNORE INTO streams (name) VALUES (?)", (name,))
            sid = conn.execute("SELECT id FROM streams WHERE name = ?", (name,)).fetchone()[0]
            self._stream_ids[name] = sid
        return sid

    def _write(self, batch: list[Pending]) -> Head:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(exc, "could not start the append transaction") from exc
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version or len(self._session_cache) > 50_000:
                self._session_cache.clear()  # another connection committed: our copies may be stale
                self._data_version = version
            row = conn.execute(
                "SELECT seq, hash, recorded_at FROM entries ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev, last_us = (0, chain.GENESIS_HASH, 0) if row is None else row
            edge = CompactRange(seq, dict(conn.execute("SELECT level, hash FROM merkle_edge").fetchall()))
            now = max(time.time_ns() // 1000, last_us)
            rows = []
            sessions = _CachedSessions(conn, self._session_cache)
            projector = self._projector
            urandom = os.urandom
            p_hash_of = chain.payload_hash
            chain_hash = chain.chain_hash
            for p in [m for g in batch for m in (g.members if g.members is not None else (g,))]:
                if p.effect is not None:
                    p.effect(conn)
                if p.build is not None:
                    sessions.flush_dirty()  # the builder reads the projections as of this point
                    p.payload, p.data = p.build(conn, sessions)
                seq += 1
                salt = urandom(chain.SALT_BYTES)
                ph = p_hash_of(salt, p.payload)
                h = chain_hash(prev, seq, p.stream, p.type, now, ph)
                rows.append((seq, self._stream_id(p.stream), p.type, now, p.payload, salt, ph, h))
                edge.append(h)
                p.entry = Entry(seq, p.stream, p.type, now, p.payload, salt, ph, prev, h)
                prev = h
                if p.type in PROJECTED_TYPES:
                    sessions.seq = seq
                    data = p.data if p.data is not None else json.loads(p.payload)
                    projector.apply(sessions, p.stream, p.type, data, now)
            conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
            sessions.flush()
            conn.execute("DELETE FROM merkle_edge")
            conn.executemany("INSERT INTO merkle_edge VALUES (?, ?)", edge.peaks.items())
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise translate(exc, f"append of {len(batch)} event(s) failed") from exc
        except LedgerError:  # a builder's own refusal (e.g. Conflict): as it is
            self._rollback()
            raise
        except BaseException as exc:
            self._rollback()
            raise StorageError(
                f"append of {len(batch)} event(s) failed: {type(exc).__name__}: {exc}"
            ) from exc
        return Head(seq, prev, now)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._stream_ids.clear()  # ids inserted in the rolled-back transaction are gone
        self._session_cache.clear()

    @staticmethod
    def _release(batch: list[Pending]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        for p in batch:
            if p.loop is not None:
                by_loop.setdefault(p.loop, []).append(p)
            elif p.lock is not None:
                p.lock.release()
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve_futures, items)


def _resolve_futures(items: list[Pending]) -> None:
    for p in items:
        fut = p.future
        if fut is None or fut.done():
            continue
        if p.error is not None:
            fut.set_exception(p.error)
        else:
            fut.set_result(p.entry)  # type: ignore[arg-type]
