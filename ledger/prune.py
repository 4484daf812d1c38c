"""Pruning: payloads of terminal, old sessions go to an archive; headers and hashes stay.

Order of work, so that a crash at any point loses nothing: (1) choose the streams, (2) write and
fsync the archive, (3) in ONE append transaction null their payloads and salts and record the
`ledger.pruned` event carrying each session's final state, (4) sign a checkpoint, (5) VACUUM so
the file really shrinks. A crash before (3) leaves an extra archive file and an intact ledger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import sqlite_store as store
from ledger.archive import write_archive
from ledger.encoding import encode_event
from ledger.entry import LEDGER_STREAM, Entry, datetime_to_us
from ledger.errors import PruneError
from ledger.writer import Pending
from schemas.events import TERMINAL_STATUSES, Pruned

if TYPE_CHECKING:
    from ledger.api import Ledger

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


def run(
    led: Ledger, cutoff: datetime, *, archive: Path | None, dry_run: bool, now: datetime | None
) -> PruneReport:
    """The prune itself (see the module docstring for its order of work)."""
    now = now or datetime.now(UTC)
    if cutoff.tzinfo is None:
        raise PruneError(f"cutoff {cutoff.isoformat()} has no timezone")
    if cutoff > now:
        raise PruneError(f"cutoff {cutoff.isoformat()} is in the future (now is {now.isoformat()})")
    report = PruneReport(
        cutoff=cutoff.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        dry_run=dry_run,
        db_bytes_before=file_bytes(led.path),
    )
    conn = led._reader()
    # Only entries up to the current head are archived and stripped: an entry another writer appends to a
    # chosen stream while the archive is written must keep its payload, since the archive lacks it.
    upto = store.read_head(conn).size
    chosen, sessions, report.skipped_active = choose_streams(conn, cutoff)
    report.sessions, report.streams = sessions, len(chosen)
    names = [name for _, name in chosen]
    for batch_start in range(0, len(names), 500):
        for e in store.iter_entries(conn, stop=upto, streams=names[batch_start : batch_start + 500]):
            if e.payload is not None:
                report.entries += 1
                report.payload_bytes += len(e.payload)
    if dry_run or not chosen:
        report.db_bytes_after = report.db_bytes_before
        return report
    if archive is None:
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        archive = led.path.with_name(f"{led.path.stem}.pruned-{stamp}.jsonl.gz")
    header = {
        "origin": led.origin,
        "ledger_id": led.ledger_id,
        "cutoff": report.cutoff,
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "sessions": sessions,
    }

    def archived() -> Iterator[Entry]:
        for batch_start in range(0, len(names), 500):
            for e in store.iter_entries(conn, stop=upto, streams=names[batch_start : batch_start + 500]):
                if e.payload is not None:
                    yield e

    written, digest = write_archive(Path(archive), header, archived())
    report.archive, report.archive_sha256 = str(archive), digest
    # Pruned events also changed other sessions (a spawn adds to the parent's children, an output rolls up
    # into every ancestor, a revocation ends a subtree): snapshot the whole delegation tree of each pruned
    # session, or replay, which cannot fold pruned payloads, would drift on those relatives.
    pruned_ids = set(sessions)

    def build(conn: Any, projections: Any) -> tuple[bytes, dict[str, Any]]:
        # runs inside the prune's own transaction: the snapshots are the states as of this very append
        snapshots = []
        for sid in related_sessions(conn, sessions):
            state = projections.get(sid)
            if state is not None:
                snapshots.append({"session_id": sid, "state": redact(state) if sid in pruned_ids else state})
        event = Pruned(
            cutoff=cutoff,
            entries=written,
            payload_bytes=report.payload_bytes,
            sessions=snapshots,
            archive=str(archive),
            archive_sha256=digest,
        )  # type: ignore[arg-type]
        _, payload, data = encode_event(event)
        return payload, data

    p = Pending(LEDGER_STREAM, "ledger.pruned", b"", None)
    p.build = build
    p.effect = null_payloads([sid for sid, _ in chosen], upto)
    led._commit(p)
    if led.signer is not None:
        led.checkpoint(trigger="prune")
    led.compact()
    report.db_bytes_after = file_bytes(led.path)
    return report
