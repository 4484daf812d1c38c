"""SQLite access: connections, schema, reads. The only module (with writer.py, and the stand-alone
payload_check.py worker) that imports sqlite3."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ledger.entry import Entry, Head
from ledger.errors import StorageError
from ledger.sqlite_schema import DDL, ENTRY_COLUMNS, ENTRY_FROM, FORMAT_VERSION
from ledger.writer import translate


def connect(
    path: Path, *, durable: bool = True, readonly: bool = False, cache_kib: int = 16000
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, FULL sync when durable."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=60)
        else:
            conn = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    except sqlite3.Error as exc:
        raise translate(exc, f"could not open the ledger at {path}") from exc
    return conn


def init_schema(conn: sqlite3.Connection, ledger_id: str, origin: str, created_at: str) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        for key, value in (
            ("format_version", FORMAT_VERSION),
            ("ledger_id", ledger_id),
            ("origin", origin),
            ("created_at", created_at),
        ):
            conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise translate(exc, "could not create the ledger schema") from exc


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise StorageError(f"this file is not a delegation ledger (no meta table): {exc}") from exc


def read_head(conn: sqlite3.Connection) -> Head:
    row = conn.execute("SELECT seq, hash, recorded_at FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    return Head(0, bytes(32), 0) if row is None else Head(row[0], row[1], row[2])


def _entries_with_prev(rows: Iterator[tuple[Any, ...]], prev: bytes) -> Iterator[Entry]:
    for seq, stream, type_, at, payload, salt, phash, h in rows:
        yield Entry(seq, stream, type_, at, payload, salt, phash, prev, h)
        prev = h


def iter_entries(
    conn: sqlite3.Connection,
    *,
    start: int = 1,
    stop: int | None = None,
    stream: str | None = None,
    streams: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int | None = None,
    descending: bool = False,
) -> Iterator[Entry]:
    """Entries in seq order matching every filter given. `prev_hash` is filled from the chain."""
    where = ["e.seq >= ?"]
    args: list[Any] = [start]
    if stop is not None:
        where.append("e.seq <= ?")
        args.append(stop)
    if stream is not None:
        streams = [stream, *(streams or [])]
    if streams:
        where.append(f"s.name IN ({','.join('?' * len(streams))})")
        args.extend(streams)
    if types:
        where.append(f"e.type IN ({','.join('?' * len(types))})")
        args.extend(types)
    if since_us is not None:
        where.append("e.recorded_at >= ?")
        args.append(since_us)
    if until_us is not None:
        where.append("e.recorded_at < ?")
        args.append(until_us)
    sql = f"SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE {' AND '.join(where)} ORDER BY e.seq"
    if descending:
        sql += " DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    contiguous = not (streams or types or since_us or until_us or descending)
    try:
        cursor = conn.execute(sql, args)
        cursor.arraysize = 1000
    except sqlite3.Error as exc:
        raise translate(exc, "could not read entries") from exc
    try:
        if contiguous:
            prev_row = conn.execute("SELECT hash FROM entries WHERE seq = ?", (start - 1,)).fetchone()
            yield from _entries_with_prev(iter(cursor), prev_row[0] if prev_row else bytes(32))
            return
        yield from _filtered(conn, cursor)
    except sqlite3.OperationalError as exc:
        raise StorageError(
            f"could not read entries: {exc}; the file may have been tampered with (run `ledger verify`)"
        ) from exc


def _filtered(conn: sqlite3.Connection, cursor: sqlite3.Cursor) -> Iterator[Entry]:
    for seq, stream_name, type_, at, payload, salt, phash, h in cursor:
        prev_row = conn.execute("SELECT hash FROM entries WHERE seq = ?", (seq - 1,)).fetchone()
        yield Entry(
            seq, stream_name, type_, at, payload, salt, phash, prev_row[0] if prev_row else bytes(32), h
        )


def iter_rows(
    conn: sqlite3.Connection, *, until: int | None = None, hashes_only: bool = False
) -> Iterator[tuple[Any, ...]]:
    """Every stored entry as a plain row, in seq order (the verifier's fast path); `until`: entries
    1..until only; `hashes_only`: salt and payload hash left out (NULL), for a reader that does not
    verify.

    Text columns come back as raw bytes: the chain hashes the bytes anyway, and a stream name or type
    corrupted into invalid UTF-8 must reach the verifier (which names the entry) instead of failing
    the read. Give this its own connection.
    """
    conn.text_factory = bytes
    columns = ENTRY_COLUMNS.replace("e.salt, e.payload_hash", "NULL, NULL") if hashes_only else ENTRY_COLUMNS
    where = "" if until is None else "WHERE e.seq <= ? "
    try:
        cursor = conn.execute(
            f"SELECT {columns} FROM {ENTRY_FROM} {where}ORDER BY e.seq", () if until is None else (until,)
        )
    except sqlite3.Error as exc:
        raise translate(exc, "could not read entries") from exc
    cursor.arraysize = 2000
    return iter(cursor)


def iter_header_rows(conn: sqlite3.Connection, last_seq: int) -> Iterator[tuple[Any, ...]]:
    """Like `iter_rows` up to `last_seq`, without the payloads (NULL in their place): the chain half of a
    parallel verify. Call it in the read transaction where `last_seq` was read."""
    conn.text_factory = bytes
    try:
        cursor = conn.execute(
            "SELECT e.seq, s.name, e.type, e.recorded_at, NULL, NULL, e.payload_hash, e.hash "
            f"FROM {ENTRY_FROM} WHERE e.seq <= ? ORDER BY e.seq",
            (last_seq,),
        )
    except sqlite3.Error as exc:
        raise translate(exc, "could not read entries") from exc
    cursor.arraysize = 2000
    return iter(cursor)


def begin_snapshot(conn: sqlite3.Connection) -> int:
    """Open a read transaction on `conn` and return the last seq it sees (0 when empty)."""
    try:
        conn.execute("BEGIN")
        return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0]
    except sqlite3.Error as exc:
        raise translate(exc, "could not read the ledger's head") from exc


def read_checkpoints(conn: sqlite3.Connection) -> list[tuple[int, str, str, int]]:
    """(size, note, trigger, created_at) of every stored checkpoint, oldest first."""
    return conn.execute("SELECT size, note, trigger, created_at FROM checkpoints ORDER BY id").fetchall()


def store_checkpoint(
    conn: sqlite3.Connection, size: int, root: bytes, head: bytes, note: str, trigger: str, created_at_us: int
) -> None:
    conn.execute(
        "INSERT INTO checkpoints (size, root, head, note, trigger, created_at) VALUES (?,?,?,?,?,?)",
        (size, root, head, note, trigger, created_at_us),
    )


def read_session(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT state FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return None if row is None else json.loads(row[0])


def read_sessions(
    conn: sqlite3.Connection,
    *,
    statuses: Sequence[str] | None = None,
    task_id: str | None = None,
    root_session_id: str | None = None,
) -> list[dict[str, Any]]:
    where, args = [], []
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args.extend(statuses)
    if task_id is not None:
        where.append("task_id = ?")
        args.append(task_id)
    if root_session_id is not None:
        where.append("root_session_id = ?")
        args.append(root_session_id)
    sql = (
        "SELECT state FROM sessions"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY updated_seq"
    )
    return [json.loads(r[0]) for r in conn.execute(sql, args)]


def streams_from(conn: sqlite3.Connection, prefix: str, limit: int) -> list[str]:
    """Up to `limit` stream names starting with `prefix`, in order: a range on the names' unique index
    (in SQLite's binary order a name starts with `prefix` exactly when it lies in [prefix, next))."""
    if not prefix or ord(prefix[-1]) == 0x10FFFF:  # no upper bound to the range: scan the names
        rows = conn.execute(
            "SELECT name FROM streams WHERE substr(name, 1, ?) = ? ORDER BY name LIMIT ?",
            (len(prefix), prefix, limit),
        )
    else:
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = conn.execute(
            "SELECT name FROM streams WHERE name >= ? AND name < ? ORDER BY name LIMIT ?",
            (prefix, upper, limit),
        )
    return [r[0] for r in rows]


def read_meta_safe(conn: sqlite3.Connection) -> dict[str, str]:
    """Meta rows, or {} when the file has no ledger schema yet."""
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError:
        return {}


def read_revoked(conn: sqlite3.Connection) -> frozenset[str]:
    """Ids of the sessions whose projected state is revoked (without loading every state)."""
    rows = conn.execute("SELECT session_id FROM sessions WHERE json_extract(state, '$.revoked') = 1")
    return frozenset(r[0] for r in rows)
