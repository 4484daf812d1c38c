"""The hash-chained, signed, prunable, replayable SQLite event log.

`ledger` imports only `schemas` of the project. The public surface is small: `Ledger` (open,
append, read, checkpoint, verify), `verify_entries` (any iterable of entries) and the errors.
"""

from ledger.api import Ledger
from ledger.canonical import canonical_bytes
from ledger.encoding import encode_event
from ledger.entry import LEDGER_STREAM, Entry, Head
from ledger.errors import (
    ArchiveError,
    Conflict,
    LedgerClosed,
    LedgerError,
    PayloadError,
    PruneError,
    SigningKeyError,
    StorageError,
    StorageFull,
)
from ledger.verify import ChainBroken, VerifyReport, verify_entries, verify_rows

__all__ = [
    "LEDGER_STREAM",
    "ArchiveError",
    "ChainBroken",
    "Conflict",
    "Entry",
    "Head",
    "Ledger",
    "LedgerClosed",
    "LedgerError",
    "PayloadError",
    "PruneError",
    "SigningKeyError",
    "StorageError",
    "StorageFull",
    "VerifyReport",
    "canonical_bytes",
    "encode_event",
    "verify_entries",
    "verify_rows",
]
