"""The witness copy of the newest checkpoint, kept outside the database (beside the key).

Deleting the checkpoints from the database, to hide a truncated or re-hashed chain, does not delete
this file; `verify` checks it too, as it checks any checkpoint note handed in from elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger.errors import SigningKeyError
from ledger.verify import StoredCheckpoint


def read_witness(path: Path) -> StoredCheckpoint | None:
    """A checkpoint note kept in a file (the witness copy, or one published elsewhere); None if absent."""
    try:
        note = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SigningKeyError(f"checkpoint file {path} is unreadable: {exc}") from exc
    lines = note.split("\n")
    if len(lines) < 2 or not lines[1].isdigit():
        raise SigningKeyError(f"{path} is not a checkpoint note (expected origin, then size on line 2)")
    return StoredCheckpoint(int(lines[1]), note)


def write_witness(path: Path, size: int, note: str) -> None:
    """Replace the witness atomically (0600, fsynced) unless it already covers a larger size."""
    current = read_witness(path)
    if current is not None and current.size > size:
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(note)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
