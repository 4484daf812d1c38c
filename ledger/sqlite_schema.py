"""DDL of the ledger file. Entries are append-only; projections are rebuilt by replay."""

from __future__ import annotations

FORMAT_VERSION = "1"

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS entries (
    seq          INTEGER PRIMARY KEY,
    stream_id    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL,
    payload      BLOB,
    salt         BLOB,
    payload_hash BLOB NOT NULL,
    hash         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_stream ON entries (stream_id);
CREATE TABLE IF NOT EXISTS merkle_edge (
    level INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id          INTEGER PRIMARY KEY,
    size        INTEGER NOT NULL,
    root        BLOB NOT NULL,
    head        BLOB NOT NULL,
    note        TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id        TEXT PRIMARY KEY,
    task_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    parent_session_id TEXT,
    root_session_id   TEXT NOT NULL,
    ended_at          TEXT,
    updated_seq       INTEGER NOT NULL,
    state             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_task ON sessions (task_id);
"""

ENTRY_COLUMNS = "e.seq, s.name, e.type, e.recorded_at, e.payload, e.salt, e.payload_hash, e.hash"
# CROSS JOIN fixes the join order in SQLite: entries scanned in seq order, streams looked up by key
# (never a temporary sort of the whole chain, whatever the planner estimates)
ENTRY_FROM = "entries e CROSS JOIN streams s ON s.id = e.stream_id"
