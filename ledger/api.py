"""The public Python API: open a ledger, append, read, checkpoint, verify.

with Ledger.open("audit.db") as led:
    entry = led.append("session-1", OperatorNote(text="looked fine", by="ops"))
    assert led.verify().ok
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ledger import prune as prune_mod
from ledger import replay as replay_mod
from ledger import sqlite_store as store
from ledger.archive import ArchiveReport, verify_archive
from ledger.chain import MAX_STREAM_BYTES, MAX_TYPE_BYTES
from ledger.checkpoint import Checkpoint, Signer, Verifier, load_signer, load_verifier, write_key_pair
from ledger.encoding import encode_event
from ledger.entry import LEDGER_STREAM, Entry, Head
from ledger.errors import Conflict, LedgerError, PayloadError, SigningKeyError, StorageError
from ledger.merkle import CompactRange
from ledger.paths import key_path_for
from ledger.prune import PruneReport
from ledger.replay import ReplayReport
from ledger.verify import StoredCheckpoint, VerifyReport
from ledger.verify_parallel import verify_database
from ledger.witness import read_witness, write_witness
from ledger.writer import Pending, Writer
from schemas.events import CheckpointSigned
from schemas.state import SessionState


class Ledger:
    """One ledger file: a single writer thread, thread-local readers, an optional signing key."""

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        key_path: Path | None = None,
        checkpoint_every: int = 10_000,
        checkpoint_interval_s: float = 300.0,
    ) -> None:
        self.path = Path(path)
        self.durable = durable
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        meta = store.read_meta(self._reader())
        if not meta:
            raise StorageError(f"{self.path} is not an initialised ledger (no meta rows)")
        self.ledger_id = meta["ledger_id"]
        self.origin = meta["origin"]
        self.key_path = Path(key_path) if key_path else key_path_for(self.ledger_id)
        self._signer: Signer | None = None
        if self.key_path.exists():
            self._signer = load_signer(self.key_path)
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval_s = checkpoint_interval_s
        last = store.read_checkpoints(self._reader())
        self._last_cp_size = last[-1][0] if last else 0
        self._last_cp_time = time.monotonic()
        self._writer = Writer(lambda: store.connect(self.path, durable=durable), self._maybe_checkpoint)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, create: bool = True, **kwargs: Any) -> Ledger:
        """Open the ledger at `path`, creating the file and schema when `create` and it is absent."""
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise StorageError(f"no ledger at {path} (run `ledger init` first, or pass --db)")
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = store.connect(path)
        try:
            if not store.read_meta_safe(conn):
                ledger_id = uuid.uuid4().hex[:16]
                store.init_schema(
                    conn,
                    ledger_id,
                    f"delegation-ledger/{ledger_id}",
                    datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                )
        finally:
            conn.close()
        return cls(path, **kwargs)

    @classmethod
    def init(cls, path: str | Path, *, key_path: Path | None = None, **kwargs: Any) -> Ledger:
        """Create the ledger (if absent) and its Ed25519 signing key (mode 0600, outside the database)."""
        led = cls.open(path, key_path=key_path, **kwargs)
        if led._signer is None:
            signer = Signer.generate(led.origin)
            write_key_pair(signer, led.key_path)
            led._signer = signer
        return led

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = store.connect(self.path, durable=self.durable)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- appending ---------------------------------------------------------------------------
    def _pending(self, stream: str, event: BaseModel | Mapping[str, Any]) -> Pending:
        try:
            size = len(stream.encode()) if isinstance(stream, str) else 0
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: refused like any invalid name
            size = 0
        if not size or size > MAX_STREAM_BYTES:
            raise PayloadError(
                f"stream must be a non-empty UTF-8 string of at most {MAX_STREAM_BYTES} bytes "
                f"(got {stream!r:.80})"
            )
        type_, payload, data = encode_event(event)
        if len(type_.encode()) > MAX_TYPE_BYTES:
            raise PayloadError(f"event type longer than {MAX_TYPE_BYTES} bytes")
        return Pending(stream, type_, payload, data)

    def _commit(self, p: Pending) -> None:
        """Commit one append (or group) durably, or fail: on this thread when the writer is idle, else
        through the writer's queue, waiting for its batch."""
        if self._writer.commit_here(p):
            if p.error is not None:
                raise p.error
            return
        p.lock = threading.Lock()
        p.lock.acquire()
        self._writer.submit(p)
        p.lock.acquire()
        if p.error is not None:
            raise p.error

    def append(self, stream: str, event: BaseModel | Mapping[str, Any]) -> Entry:
        """Append one event and return its entry once it is durably committed."""
        p = self._pending(stream, event)
        self._commit(p)
        assert p.entry is not None
        return p.entry

    async def append_async(self, stream: str, event: BaseModel | Mapping[str, Any]) -> Entry:
        """Append from a coroutine; concurrent callers share commits (group commit)."""
        return await self._queued(self._pending(stream, event))

    async def _queued(self, p: Pending) -> Entry:
        """Hand `p` to the writer and wait, without blocking the event loop, until it is committed."""
        loop = asyncio.get_running_loop()
        p.loop = loop
        p.future = loop.create_future()
        self._writer.submit(p)
        return await p.future

    def _conditional(
        self,
        stream: str,
        event: BaseModel | Mapping[str, Any],
        condition: Callable[[SessionState | None], str | None],
    ) -> Pending:
        p = self._pending(stream, event)
        payload, data = p.payload, p.data

        def build(conn: Any, projections: Any) -> tuple[bytes, dict[str, Any] | None]:
            state = projections.get(stream)
            refusal = condition(None if state is None else SessionState.model_validate(state))
            if refusal is not None:
                raise Conflict(f"not appended to {stream}: {refusal}")
            return payload, data

        p.build = build
        return p

    def append_if(
        self,
        stream: str,
        event: BaseModel | Mapping[str, Any],
        condition: Callable[[SessionState | None], str | None],
    ) -> Entry:
        """Append one event only if `condition` (given the stream's session as projected at that very
        point of the chain, or None) returns None; else raise Conflict with the reason it returns and
        write nothing. Check and append are one transaction: of several writers (engines, processes)
        racing on one condition, exactly one wins."""
        p = self._conditional(stream, event, condition)
        self._commit(p)
        assert p.entry is not None
        return p.entry

    async def append_if_async(
        self,
        stream: str,
        event: BaseModel | Mapping[str, Any],
        condition: Callable[[SessionState | None], str | None],
    ) -> Entry:
        """`append_if` from a coroutine (the condition runs on the writer's thread)."""
        return await self._queued(self._conditional(stream, event, condition))

    def append_many(self, items: Sequence[tuple[str, BaseModel | Mapping[str, Any]]]) -> list[Entry]:
        """Append several events atomically: all commit in one transaction, or none does."""
        members = [self._pending(s, e) for s, e in items]
        if not members:
            return []
        group = Pending(LEDGER_STREAM, "", b"", None)
        group.members = members
        self._commit(group)
        return [m.entry for m in members]  # type: ignore[misc]

    # -- reading -----------------------------------------------------------------------------
    def head(self) -> Head:
        return store.read_head(self._reader())

    def entries(self, **filters: Any) -> Iterator[Entry]:
        """Entries in seq order; filters: start, stop, stream, streams, types, since_us, until_us, limit,
        descending."""
        return store.iter_entries(self._reader(), **filters)

    def session(self, session_id: str) -> SessionState | None:
        state = store.read_session(self._reader(), session_id)
        return None if state is None else SessionState.model_validate(state)

    def sessions(
        self,
        *,
        statuses: Sequence[str] | None = None,
        task_id: str | None = None,
        root_session_id: str | None = None,
    ) -> list[SessionState]:
        rows = store.read_sessions(
            self._reader(), statuses=statuses, task_id=task_id, root_session_id=root_session_id
        )
        return [SessionState.model_validate(r) for r in rows]

    def streams_from(self, prefix: str, limit: int = 10) -> list[str]:
        """Up to `limit` stream (session) names that start with `prefix`, in order; the exact name, if it
        exists, is the first."""
        return store.streams_from(self._reader(), prefix, limit)

    def revoked_sessions(self) -> frozenset[str]:
        """The sessions revoked so far (directly or with a revoked ancestor's subtree)."""
        return store.read_revoked(self._reader())

    def meta(self) -> dict[str, str]:
        return store.read_meta(self._reader())

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def signer(self) -> Signer | None:
        return self._signer

    def verifier(self) -> Verifier | None:
        pub = self.key_path.with_suffix(".pub")
        return load_verifier(pub) if pub.exists() else None

    def _sign_current(self, conn: Any, head: Head, trigger: str) -> Checkpoint:
        if self._signer is None:
            raise SigningKeyError(f"no signing key at {self.key_path} (run `ledger init`)")
        peaks = dict(conn.execute("SELECT level, hash FROM merkle_edge").fetchall())
        root = CompactRange(head.size, peaks).root()
        cp = self._signer.sign(self.origin, head.size, root, head.hash)
        store.store_checkpoint(conn, head.size, root, head.hash, cp.note, trigger, time.time_ns() // 1000)
        return cp

    def _maybe_checkpoint(self, conn: Any, head: Head) -> None:
        if self._signer is None or head.size <= self._last_cp_size:
            return
        due = head.size - self._last_cp_size >= self._checkpoint_every or (
            time.monotonic() - self._last_cp_time >= self._checkpoint_interval_s
        )
        if due:
            self._sign_at_head(conn, "periodic")

    def _sign_at_head(self, conn: Any, trigger: str) -> Checkpoint:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cp = self._sign_current(conn, store.read_head(conn), trigger)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._last_cp_size = cp.size
        self._last_cp_time = time.monotonic()
        self._write_witness(cp)
        return cp

    @property
    def witness_path(self) -> Path:
        """A copy of the newest checkpoint kept beside the key, outside the database: deleting the
        checkpoints from the database (to hide a rewritten or truncated chain) does not delete it."""
        return self.key_path.with_suffix(".checkpoint")

    def _write_witness(self, cp: Checkpoint) -> None:
        write_witness(self.witness_path, cp.size, cp.note)

    def checkpoint(self, trigger: str = "manual", audit_report_sha256: str | None = None) -> Checkpoint:
        """Sign the current head, store the checkpoint and record it as an event."""
        conn = store.connect(self.path, durable=self.durable)
        try:
            cp = self._sign_at_head(conn, trigger)
        finally:
            conn.close()
        self.append(
            LEDGER_STREAM,
            CheckpointSigned(
                size=cp.size,
                root_hash=cp.root.hex(),
                head_hash=cp.head.hex(),
                note=cp.note,
                trigger=trigger,  # type: ignore[arg-type]
                audit_report_sha256=audit_report_sha256,
            ),
        )
        return cp

    def checkpoints(self) -> list[StoredCheckpoint]:
        """The checkpoints stored in the database, oldest first."""
        return [StoredCheckpoint(size, note) for size, note, _t, _c in store.read_checkpoints(self._reader())]

    # -- verifying ---------------------------------------------------------------------------
    def verify(
        self,
        *,
        verifier: Verifier | None = None,
        progress: Callable[[int], None] | None = None,
        extra_checkpoints: Sequence[StoredCheckpoint] = (),
        parallel: bool | None = None,
    ) -> VerifyReport:
        """Stream the whole chain and check every link, payload and checkpoint.

        Checked: the checkpoints in the database, the witness copy beside the key, and any
        `extra_checkpoints` kept elsewhere (e.g. published ones). A large ledger is verified on two
        cores (`parallel=None`; see ledger/verify_parallel.py), with the same report.
        """
        checkpoints = [*self.checkpoints(), *extra_checkpoints]
        witness = read_witness(self.witness_path)
        if witness is not None and all(c.note != witness.note for c in checkpoints):
            checkpoints.append(witness)
        return verify_database(
            self.path,
            checkpoints=checkpoints,
            verifier=verifier if verifier is not None else self.verifier(),
            origin=self.origin,
            progress=progress,
            parallel=parallel,
        )

    # -- pruning, archives, replay ---------------------------------------------------------
    def prune(
        self,
        cutoff: datetime,
        *,
        archive: Path | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """Archive then remove payloads of terminal sessions older than `cutoff`; headers and hashes stay."""
        return prune_mod.run(self, cutoff, archive=archive, dry_run=dry_run, now=now)

    def compact(self) -> None:
        """VACUUM and truncate the WAL so freed pages leave the file."""
        conn = store.connect(self.path, durable=self.durable)
        try:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def verify_archive(self, path: Path) -> ArchiveReport:
        """Re-check archived payloads against the hashes this ledger retained."""
        conn = self._reader()

        def retained(seq: int) -> Entry | None:
            return next(store.iter_entries(conn, start=seq, stop=seq), None)

        return verify_archive(Path(path), retained, origin=self.origin)

    def replay(self, *, check: bool = False, progress: Callable[[int], None] | None = None) -> ReplayReport:
        """Rebuild the projections from the events; with `check`, compare instead of writing."""
        return replay_mod.run(self, check=check, progress=progress)

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the writer (after the queued appends) and close every reader connection, of every thread."""
        self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(Exception):
                    conn.close()
            self._readers.clear()
        self._local = threading.local()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LEDGER_STREAM", "Ledger", "LedgerError", "encode_event"]
