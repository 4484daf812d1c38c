"""Which engine owns a delegation, and whether that engine still runs.

Several engines may share one ledger (two MCP clients each starting `ledger serve` on the default
one). Each approved delegation records the engine that runs it (``gate.decided`` ``engine``), an
id ``<boot id>:<pid namespace>/<pid>/<process start ticks>/<instance>``: the process (a pid is
never the same process twice within one boot and pid namespace, given its start time) and the
Engine instance inside it. Recovery, and the engines that run, settle only the sessions whose
engine is gone; those of a live engine are left to it. An engine of another pid namespace (another
container sharing the ledger file) cannot be seen from here: it counts as alive, never as gone, so
its sessions are never taken from it by mistake (a SQLite ledger in WAL mode is shared by one host
only, so an engine of another boot id is gone).
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


@cache
def _pid_namespace() -> str:
    """This process's pid namespace (the inode of /proc/self/ns/pid), or "" where there is none."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return "".join(c for c in link if c.isdigit())


def _host() -> str:
    ns = _pid_namespace()
    return f"{_boot_id()}:{ns}" if ns else _boot_id()


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (/proc/PID/stat field 22); None if gone; "?"
    when the process exists but /proc does not show it (its start time cannot be compared then)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # gone; or no /proc, or one that hides other users' processes (hidepid): ask the kernel
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
    engine_id = f"{_host()}/{pid}/{_start_ticks(pid)}/{uuid.uuid4().hex[:12]}"
    _running.add(engine_id)
    return engine_id


def engine_stopped(engine_id: str) -> None:
    _running.discard(engine_id)


def engine_alive(engine_id: str) -> bool:
    """Whether the engine of ``engine_id`` still runs (an id not of this form: False)."""
    parts = engine_id.split("/")
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    host, pid, ticks, _ = parts
    boot, _, ns = host.partition(":")
    if boot != _boot_id():
        return False  # the machine rebooted since
    if ns and ns != _pid_namespace():
        return True  # another container's: its pids are not ours to look up
    # (an id without a namespace, written before they were recorded, is judged by its pid, as then)
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
