"""Replay: rebuild every projection from the events, or compare a rebuild with what is stored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledger import sqlite_store
from ledger.canonical import load_payload
from ledger.errors import StorageError
from ledger.projections import PROJECTED_TYPES, DictSessions, Projector
from ledger.sqlite_schema import ENTRY_FROM

if TYPE_CHECKING:
    from ledger.api import Ledger


@dataclass
class ReplayReport:
    events: int = 0
    folded: int = 0
    sessions: int = 0
    drift: list[dict[str, Any]] = field(default_factory=list)
    checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.drift

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "events": self.events,
            "folded": self.folded,
            "sessions": self.sessions,
            "drift": self.drift[:200],
            "drift_count": len(self.drift),
        }


def rebuild(
    conn: sqlite3.Connection, progress: Callable[[int], None] | None = None
) -> tuple[DictSessions, int]:
    """Fold every projected event in seq order into fresh projections; (sessions, events folded)."""
    store = DictSessions()
    apply = Projector().apply
    types = sorted(PROJECTED_TYPES)
    cursor = conn.execute(
        f"SELECT e.seq, s.name, e.type, e.payload, e.recorded_at FROM {ENTRY_FROM} "
        f"WHERE e.type IN ({','.join('?' * len(types))}) AND e.payload IS NOT NULL ORDER BY e.seq",
        types,
    )
    cursor.arraysize = 2000
    loads = load_payload
    n = 0
    try:
        for seq, stream, type_, payload, at in cursor:
            store.seq = seq
            apply(store, stream, type_, loads(payload), at)
            n += 1
            if progress is not None and not n & 0x3FFF:
                progress(n)
    except (sqlite3.OperationalError, ValueError) as exc:
        raise StorageError(
            f"replay could not read the entry after seq {store.seq}: {exc}; the file may have "
            "been tampered with (run `ledger verify`)"
        ) from exc
    # ledger.pruned snapshots were applied in order above; nothing else to restore
    return store, n


def stored(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    return {sid: json.loads(state) for sid, state in conn.execute("SELECT session_id, state FROM sessions")}


_QUERY_COLUMNS = ("task_id", "status", "parent_session_id", "root_session_id", "ended_at")


def column_drift(rebuilt: dict[str, dict[str, Any]], conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Indexed columns (what `sessions(...)` queries filter on) that disagree with the rebuilt state."""
    drift: list[dict[str, Any]] = []
    sql = f"SELECT session_id, {', '.join(_QUERY_COLUMNS)} FROM sessions ORDER BY session_id"
    for sid, *columns in conn.execute(sql):
        want = rebuilt.get(sid)
        if want is None:
            continue  # already reported as stored_only
        for key, value in zip(_QUERY_COLUMNS, columns, strict=True):
            if want.get(key) != value:
                drift.append(
                    {
                        "session_id": sid,
                        "field": key,
                        "problem": "column_differs",
                        "expected": want.get(key),
                        "actual": value,
                        "message": f"session {sid}: the {key} column is {value!r} but "
                        f"{want.get(key)!r} when rebuilt from the events",
                    }
                )
    return drift


def compare(rebuilt: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every difference between a rebuild and the stored projections, named by session and field."""
    drift: list[dict[str, Any]] = []
    for sid in sorted(set(rebuilt) | set(current)):
        a, b = rebuilt.get(sid), current.get(sid)
        if a is None:
            drift.append(
                {
                    "session_id": sid,
                    "field": None,
                    "problem": "stored_only",
                    "message": f"session {sid} is in the stored projection but no event creates it",
                }
            )
        elif b is None:
            drift.append(
                {
                    "session_id": sid,
                    "field": None,
                    "problem": "missing",
                    "message": f"session {sid} follows from the events but is missing from the projection",
                }
            )
        else:
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    drift.append(
                        {
                            "session_id": sid,
                            "field": key,
                            "problem": "differs",
                            "expected": a.get(key),
                            "actual": b.get(key),
                            "message": f"session {sid}: {key} is {b.get(key)!r} in the projection but "
                            f"{a.get(key)!r} when rebuilt from the events",
                        }
                    )
    return drift


def write_sessions(conn: sqlite3.Connection, sessions: dict[str, dict[str, Any]], last_seq: int) -> None:
    conn.execute("DELETE FROM sessions")
    conn.executemany(
        "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)",
        [
            (
                sid,
                st["task_id"],
                st["status"],
                st.get("parent_session_id"),
                st["root_session_id"],
                st.get("ended_at"),
                getattr(sessions, "updated", {}).get(sid, last_seq),
                json.dumps(st, sort_keys=True, separators=(",", ":")),
            )
            for sid, st in sessions.items()
        ],
    )


def run(led: Ledger, *, check: bool, progress: Callable[[int], None] | None) -> ReplayReport:
    """Rebuild the projections in one write transaction, or (check) compare them in a read one."""
    conn = sqlite_store.connect(led.path, durable=led.durable)
    report = ReplayReport(checked=check)
    try:
        conn.execute("BEGIN IMMEDIATE" if not check else "BEGIN")
        sessions, report.folded = rebuild(conn, progress)
        report.events = sqlite_store.read_head(conn).size
        report.sessions = len(sessions)
        if check:
            report.drift = compare(sessions, stored(conn)) + column_drift(sessions, conn)
            conn.execute("COMMIT")
        else:
            write_sessions(conn, sessions, report.events)
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return report
