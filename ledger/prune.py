"""Pruning: payloads of terminal, old sessions go to an archive; headers and hashes stay.

Order of work, so that a crash at any point loses nothing: (1) choose the streams, (2) write and
fsync the archive, (3) in ONE append transaction null their payloads and salts and record the
`ledger.pruned` event carrying each session's final state, (4) sign a checkpoint, (5) VACUUM so
the file really shrinks. A crash before (3) leaves an extra archive file and an intact ledger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.entry import datetime_to_us
from schemas.events import TERMINAL_STATUSES

NEVER_PRUNED = frozenset({"ledger"})


@dataclass
class PruneReport:
    cutoff: str
    dry_run: bool
    sessions: list[str] = field(default_factory=list)
    streams: int = 0
    entries: int = 0
    payload_bytes: int = 0
    archive: str | None = None
    archive_sha256: str | None = None
    db_bytes_before: int = 0
    db_bytes_after: int = 0
    skipped_active: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def choose_streams(
    conn: sqlite3.Connection, cutoff: datetime
) -> tuple[list[tuple[int, str]], list[str], int]:
    """(stream ids+names to prune, their session ids, active sessions left alone).

    A session stream qualifies when its session is terminal and ended before the cutoff; a stream
    without a session (a refused request, a note) when its newest entry is before the cutoff.
    """
    cutoff_us = datetime_to_us(cutoff)
    statuses = {
        sid: (status, json.loads(state).get("ended_at"))
        for sid, status, state in conn.execute("SELECT session_id, status, state FROM sessions")
    }
    active = sum(1 for status, _ in statuses.values() if status not in TERMINAL_STATUSES)
    chosen: list[tuple[int, str]] = []
    sessions: list[str] = []
    rows = conn.execute(
        "SELECT s.id, s.name, MAX(e.recorded_at), SUM(e.payload IS NOT NULL) FROM streams s "
        "JOIN entries e ON e.stream_id = s.id GROUP BY s.id"
    )
    for sid, name, newest_us, with_payload in rows:
        if name in NEVER_PRUNED or not with_payload:
            continue
        if name in statuses:
            status, ended_at = statuses[name]
            # compare instants, not ISO strings: "...:05.2Z" < "...:05Z" as text although it is later
            if (
                status in TERMINAL_STATUSES
                and ended_at is not None
                and newest_us < cutoff_us
                and datetime.fromisoformat(ended_at.replace("Z", "+00:00")) < cutoff
            ):
                chosen.append((sid, name))
                sessions.append(name)
        elif newest_us < cutoff_us:
            chosen.append((sid, name))
    return chosen, sessions, active


def related_sessions(conn: sqlite3.Connection, session_ids: list[str]) -> list[str]:
    """The given sessions, then every other session of their delegation trees (ancestors and same root)."""
    out = list(session_ids)
    seen = set(out)
    roots: set[str] = set()
    for sid in session_ids:
        cur: str | None = sid
        walked: set[str] = set()
        while cur is not None and cur not in walked:  # up the parent chain, safe against cycles
            walked.add(cur)
            row = conn.execute(
                "SELECT parent_session_id, root_session_id FROM sessions WHERE session_id = ?", (cur,)
            ).fetchone()
            if row is None:
                break
            if cur not in seen:
                seen.add(cur)
                out.append(cur)
            roots.add(row[1])
            cur = row[0]
    for root in sorted(roots):
        rows = conn.execute(
            "SELECT session_id FROM sessions WHERE root_session_id = ? ORDER BY session_id", (root,)
        )
        for (sid,) in rows:
            if sid not in seen:
                seen.add(sid)
                out.append(sid)
    return out


#: free-text fields of a session's state that come from payloads: they leave with the payloads
REDACTED_FIELDS = ("last_output", "end_reason")


def redact(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pruned session's snapshot: its counters, tree and status stay; its payload-derived text goes."""
    if state is None:
        return None
    out = dict(state)
    for key in REDACTED_FIELDS:
        if out.get(key) is not None:
            out[key] = "(pruned)"
    return out


def null_payloads(stream_ids: list[int], upto: int) -> Callable[[sqlite3.Connection], None]:
    """Strip payloads and salts of the streams' entries up to seq `upto` (the ones the archive holds)."""

    def effect(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "UPDATE entries SET payload = NULL, salt = NULL "
            "WHERE stream_id = ? AND seq <= ? AND payload IS NOT NULL",
            [(i, upto) for i in stream_ids],
        )

    return effect


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
