"""Prune archives: gzip-compressed JSON Lines, one header line then one entry per line.

Each entry line is `Entry.to_json()`: the payload as its canonical text and the salt, so anyone
can recompute `payload_hash` and compare it with the hash the ledger kept.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import chain
from ledger.entry import Entry
from ledger.errors import ArchiveError

ARCHIVE_KIND = "delegation-ledger/prune-archive/v1"


def write_archive(path: Path, header: dict[str, Any], entries: Iterable[Entry]) -> tuple[int, str]:
    """Write and fsync the archive (refusing to overwrite); return (entries written, file SHA-256)."""
    if path.exists():
        raise ArchiveError(f"archive {path} already exists; choose another --archive file")
    tmp = path.with_name(path.name + ".partial")
    count = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(json.dumps({"kind": ARCHIVE_KIND, **header}, sort_keys=True).encode() + b"\n")
                for e in entries:
                    gz.write(json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
                    count += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:  # no folder, no room, no right: the payloads stay where they are
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArchiveError(
            f"could not write the archive {path}: {exc.strerror or exc}; nothing was pruned"
        ) from exc
    return count, file_sha256(path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_archive(path: Path) -> tuple[dict[str, Any], Iterator[Entry]]:
    """The archive's header and a lazy iterator over its entries."""
    try:
        fh = gzip.open(path, "rb")  # noqa: SIM115 - the lazy entry iterator below owns and closes it
        header = json.loads(fh.readline())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path} is not a readable prune archive: {exc}") from exc
    if header.get("kind") != ARCHIVE_KIND:
        fh.close()
        raise ArchiveError(
            f"{path} is not a prune archive (kind {header.get('kind')!r}, expected {ARCHIVE_KIND!r})"
        )

    def entries() -> Iterator[Entry]:
        with fh:
            for n, line in enumerate(fh, start=2):
                try:
                    yield Entry.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ArchiveError(f"{path} line {n}: not an archived entry ({exc})") from exc

    return header, entries()


@dataclass
class ArchiveReport:
    archive: str
    checked: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "ok": self.ok,
            "checked": self.checked,
            "problems": self.problems[:100],
        }


def verify_archive(
    path: Path, retained: Callable[[int], Entry | None], origin: str | None = None
) -> ArchiveReport:
    """Check each archived payload against the hash the ledger retained for its seq."""
    report = ArchiveReport(str(path))
    header, entries = read_archive(path)
    if origin is not None and header.get("origin") != origin:
        report.problems.append(
            {
                "seq": None,
                "problem": "wrong_ledger",
                "message": f"archive belongs to {header.get('origin')!r}, not {origin!r}",
            }
        )
        return report
    for archived in entries:
        report.checked += 1
        kept = retained(archived.seq)
        if kept is None:
            report.problems.append(
                {
                    "seq": archived.seq,
                    "problem": "unknown_entry",
                    "message": f"entry {archived.seq} is not in the ledger",
                }
            )
            continue
        if archived.payload is None or archived.salt is None:
            report.problems.append(
                {
                    "seq": archived.seq,
                    "problem": "missing_payload",
                    "message": f"entry {archived.seq} has no payload in the archive",
                }
            )
            continue
        got = chain.payload_hash(archived.salt, archived.payload)
        if got != kept.payload_hash:
            report.problems.append(
                {
                    "seq": archived.seq,
                    "problem": "payload_altered",
                    "message": f"archived payload of entry {archived.seq} does not match the hash "
                    "the ledger kept",
                    "expected": kept.payload_hash.hex(),
                    "actual": got.hex(),
                }
            )
        elif (archived.stream, archived.type, archived.recorded_at_us) != (
            kept.stream,
            kept.type,
            kept.recorded_at_us,
        ):
            report.problems.append(
                {
                    "seq": archived.seq,
                    "problem": "header_mismatch",
                    "message": f"archived header of entry {archived.seq} differs from the ledger's",
                }
            )
    return report
