"""Helpers for the ledger tests: throw-away ledgers for Hypothesis examples, raw SQLite access for
tampering, and running Python in a real child process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ledger import Entry, Ledger
from schemas.events import OperatorNote

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def fresh_ledger(**kwargs: Any) -> Iterator[Ledger]:
    """A new ledger with its own key in its own temporary folder (one per Hypothesis example).

    Not durable (no fsync per commit) unless asked: these ledgers test logic, and the crash and
    multi-process tests use durable ones."""
    kwargs.setdefault("durable", False)
    with tempfile.TemporaryDirectory(prefix="ledger-test-") as tmp:
        led = Ledger.init(Path(tmp) / "l.db", key_path=Path(tmp) / "keys" / "k.key", **kwargs)
        try:
            yield led
        finally:
            led.close()


def append_all(led: Ledger, steps: Iterable[tuple[str, BaseModel]]) -> list[Entry]:
    return [led.append(stream, event) for stream, event in steps]


@contextmanager
def raw_db(path: Path | Ledger) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection in autocommit mode: the tool of someone editing the file by hand."""
    target = path.path if isinstance(path, Ledger) else path
    with closing(sqlite3.connect(target, isolation_level=None, timeout=30)) as conn:
        yield conn


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python interpreter (same virtualenv, repo on the path); fail loudly."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def spawn_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def jcs_loads(payload: bytes) -> Any:
    """Parse canonical JSON the way RFC 8785 means it: every number is a double, so integers beyond
    2**53 (which only integral floats can produce) come back as floats, not as Python ints."""
    import json

    def number(text: str) -> int | float:
        n = int(text)
        return n if abs(n) <= 2**53 - 1 else float(n)

    return json.loads(payload, parse_int=number)


def raw_append(conn: sqlite3.Connection, stream: str, event: BaseModel) -> int:
    """Append one (unprojected) event the way another process's writer would, inside the caller's open
    transaction on a plain sqlite3 connection: entry row, stream row and Merkle edge. Returns its seq."""
    import time

    from ledger import encode_event
    from ledger.chain import chain_hash, new_salt, payload_hash
    from ledger.merkle import CompactRange

    type_, payload, _ = encode_event(event)
    seq, prev, last_us = conn.execute(
        "SELECT seq, hash, recorded_at FROM entries ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    conn.execute("INSERT OR IGNORE INTO streams (name) VALUES (?)", (stream,))
    (stream_id,) = conn.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()
    at = max(time.time_ns() // 1000, last_us)
    salt = new_salt()
    ph = payload_hash(salt, payload)
    h = chain_hash(prev, seq + 1, stream, type_, at, ph)
    conn.execute(
        "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", (seq + 1, stream_id, type_, at, payload, salt, ph, h)
    )
    edge = CompactRange(seq, dict(conn.execute("SELECT level, hash FROM merkle_edge").fetchall()))
    edge.append(h)
    conn.execute("DELETE FROM merkle_edge")
    conn.executemany("INSERT INTO merkle_edge VALUES (?, ?)", edge.peaks.items())
    return seq + 1


#: every stored column of an entry a tampering test may change
COLUMNS = ("payload", "salt", "payload_hash", "hash", "type", "stream", "recorded_at")


def note(i: int) -> OperatorNote:
    return OperatorNote(text=f"note {i}", by="ops")


def fill(led: Ledger, n: int, streams: int = 3) -> list[Entry]:
    return led.append_many([(f"s{i % streams}", note(i)) for i in range(n)])


def flip_byte(conn: sqlite3.Connection, seq: int, column: str, index: int, delta: int) -> None:
    """Change one byte of one stored column of entry `seq`, keeping the column's storage class.

    `delta` (1..255) is added modulo 256 to the byte at `index` (modulo the value's length). Text columns
    are rewritten as TEXT even when the new bytes are not valid UTF-8, as disk corruption would leave them;
    the stream name lives in the `streams` table, so changing it changes it for every entry of the stream.
    """
    if column == "stream":
        sid, name = conn.execute(
            "SELECT s.id, s.name FROM entries e JOIN streams s ON s.id = e.stream_id WHERE e.seq = ?", (seq,)
        ).fetchone()
        raw = bytearray(name.encode())
    elif column == "recorded_at":
        (value,) = conn.execute("SELECT recorded_at FROM entries WHERE seq = ?", (seq,)).fetchone()
        raw = bytearray(value.to_bytes(8, "big", signed=True))
    else:
        (value,) = conn.execute(f"SELECT {column} FROM entries WHERE seq = ?", (seq,)).fetchone()
        raw = bytearray(value.encode() if isinstance(value, str) else value)
    i = index % len(raw)
    raw[i] = (raw[i] + delta) % 256
    if column == "stream":
        conn.execute("UPDATE streams SET name = CAST(? AS TEXT) WHERE id = ?", (bytes(raw), sid))
    elif column == "recorded_at":
        conn.execute(
            "UPDATE entries SET recorded_at = ? WHERE seq = ?", (int.from_bytes(raw, "big", signed=True), seq)
        )
    elif column == "type":
        conn.execute("UPDATE entries SET type = CAST(? AS TEXT) WHERE seq = ?", (bytes(raw), seq))
    else:
        conn.execute(f"UPDATE entries SET {column} = ? WHERE seq = ?", (bytes(raw), seq))
