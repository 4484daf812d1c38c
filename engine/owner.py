"""Which engine owns a delegation, and whether that engine still runs.

Several engines may share one ledger (two MCP clients each starting `ledger serve` on the default
one). Each approved delegation records the engine that runs it (``gate.decided`` ``engine``), an
id ``<boot id>/<pid>/<process start ticks>/<instance>``: the process (a pid is never the same
process twice within one boot, given its start time) and the Engine instance inside it. On start,
recovery settles only the sessions whose engine is gone; those of a live engine are left to it.
"""

from __future__ import annotations

import os
import uuid
from functools import cache

#: the engine instances of this process that are running now
_running: set[str] = set()


@cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "no-boot-id"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (/proc/PID/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: the pid alone must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return fields[19].decode()


def new_engine_id() -> str:
    """An id for an engine instance starting in this process, registered as running."""
    pid = os.getpid()
    engine_id = f"{_boot_id()}/{pid}/{_start_ticks(pid)}/{uuid.uuid4().hex[:12]}"
    _running.add(engine_id)
    return engine_id


def engine_stopped(engine_id: str) -> None:
    _running.discard(engine_id)


def engine_alive(engine_id: str) -> bool:
    """Whether the engine of ``engine_id`` still runs (an id not of this form: False)."""
    parts = engine_id.split("/")
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    boot, pid, ticks, _ = parts
    if boot != _boot_id():
        return False
    if int(pid) == os.getpid():
        return engine_id in _running
    now = _start_ticks(int(pid))
    return now is not None and (now == ticks or "?" in (now, ticks))


def runs_elsewhere(engine_id: str | None, mine: str | None) -> bool:
    """Whether ``engine_id`` names an engine other than ``mine`` that still runs."""
    return engine_id is not None and engine_id != mine and engine_alive(engine_id)


def engine_pid(engine_id: str) -> str:
    """The process id in an engine id (for messages)."""
    parts = engine_id.split("/")
    return parts[1] if len(parts) == 4 else "?"
