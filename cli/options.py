"""Shared CLI state and argument parsing (durations, dates, the ledger to open)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from cli.render import fail
from ledger import Ledger, LedgerError
from ledger.paths import default_db_path

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class State:
    db: Path | None = None
    json: bool = False

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else default_db_path()

    def open(self, *, create: bool = False) -> Ledger:
        try:
            return Ledger.open(self.db_path, create=create)
        except LedgerError as exc:
            fail(exc.diagnostics())
            raise  # unreachable


STATE = State()


def writable(path: Path, flag: str) -> Path:
    """`path` as a file to write, checked before any work is done (so nothing is recorded or pruned
    for a file that cannot be written): its folder is made if missing; exit 2 naming `flag` when it
    is a folder, or it or its folder cannot be written."""
    if path.is_dir():
        fail(f"{flag}: {path} is a folder (expected a file to write)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{flag}: cannot make the folder {path.parent} ({exc.strerror or exc})")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{flag}: {path} is not writable")
    return path


def write_failed(path: Path, flag: str, exc: OSError) -> None:
    """Exit with a clear error when writing `path` failed midway (a full disk, say)."""
    fail(f"{flag}: could not write {path} ({exc.strerror or exc})", code=1)


#: options shared by the commands that load the constitution (serve, gate check, audit)
ConstitutionOpt = Annotated[
    Path | None,
    typer.Option("--constitution", envvar="LEDGER_CONSTITUTION", help="Constitution file (TOML)."),
]
AllowRootOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-root",
        help="Allowed project root when no constitution file is used (repeatable; serve defaults to the "
        "current directory).",
    ),
]


def want_json(flag: bool) -> bool:
    return flag or STATE.json


def parse_duration(text: str, option: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        fail(f"{option}: expected a duration such as 30d, 12h, 90m, 6w or 45s (got {text!r})")
    value, unit = m.groups()  # type: ignore[union-attr]
    return timedelta(seconds=float(value) * _UNITS[unit])


def parse_when(text: str, option: str) -> datetime:
    """An RFC 3339 timestamp or a date (midnight UTC)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option}: expected a date (2026-01-31) or an RFC 3339 timestamp (got {text!r})")
    if value.tzinfo is None:
        fail(f"{option}: timestamp {text!r} has no timezone (add Z or +hh:mm)")
    return value
