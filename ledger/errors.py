"""Errors of the ledger.

    LedgerError
     ├── PayloadError          a payload cannot be recorded (not canonical JSON, unknown type, invalid)
     ├── StorageError          the SQLite file could not be read or written (wraps sqlite3 errors)
     │    └── StorageFull      the disk or the file is full; nothing was written
     ├── LedgerClosed          append after close()
     ├── Conflict              a conditional append whose condition no longer held; nothing was written
     ├── SigningKeyError       the signing key is missing, unreadable or has loose permissions
     ├── ArchiveError          a prune archive cannot be read or does not match
     └── PruneError            a prune request is invalid (cutoff in the future, running sessions...)

sqlite3 errors are translated once, in the SQLite store, never above it.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every ledger error; `diagnostics()` is the text the CLI prints."""

    def diagnostics(self) -> str:
        return str(self)


class PayloadError(LedgerError, ValueError):
    """A payload that cannot be recorded: names the field, what was expected and what was got."""


class StorageError(LedgerError):
    """The database could not be read or written."""


class StorageFull(StorageError):
    """The disk is full: the transaction was rolled back, no event was written."""


class LedgerClosed(LedgerError):
    """The ledger was closed; nothing more can be appended."""


class Conflict(LedgerError):
    """A conditional append (`Ledger.append_if`) found its condition false when its turn came: the
    stream's session had changed (another writer got there first). Nothing was written."""


class SigningKeyError(LedgerError):
    """The signing key is missing, unreadable, malformed or not private enough."""


class ArchiveError(LedgerError):
    """A prune archive is unreadable or its content does not match the ledger."""


class PruneError(LedgerError):
    """A prune that cannot be done as asked."""
