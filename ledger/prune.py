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
from datetime import UTC, datetime
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


def choose_streams(conn: sqlite3.Connection, cutoff: datetime) -> tuple[list[tuple[int, str]], list[str], int]:
    """(stream ids+names to prune, their session ids, active sessions left alone).

    A session stream qualifies when its session is terminal and ended before the cutoff; a stream
    without a session (a refused request, a note) when its newest entry is before the cutoff.
    """
    cutoff_iso = cutoff.astimezone(UTC).isoformat().replace("+00:00", "Z")
    cutoff_us = datetime_to_us(cutoff)
    statuses = {sid: (status, json.loads(state).get("ended_at"))
                for sid, status, state in conn.execute("SELECT session_id, status, state FROM sessions")}
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
            if status in TERMINAL_STATUSES and ended_at is not None and ended_at < cutoff_iso and newest_us < cutoff_us:
                chosen.append((sid, name))
                sessions.append(name)
        elif newest_us < cutoff_us:
            chosen.append((sid, name))
    return chosen, sessions, active


def null_payloads(stream_ids: list[int]) -> Callable[[sqlite3.Connection], None]:
    def effect(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE entries SET payload = NULL, salt = NULL WHERE stream_id = ? AND payload IS NOT NULL",
                         [(i,) for i in stream_ids])
    return effect


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
