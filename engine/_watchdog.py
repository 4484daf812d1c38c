"""Guard of one `opencode serve` and everything it starts, and the /proc helpers it needs.

Stdlib only: the engine runs it by path with ``python -I``, and imports its helpers.

Usage: ``python _watchdog.py PARENT_PID GRACE -- COMMAND...``
   or: ``python _watchdog.py PARENT_PID GRACE --adopt PID``

Started in a new session, it leads a process group, runs COMMAND in it and becomes a Linux "child
subreaper", so processes COMMAND starts in sessions of their own (OpenCode runs every bash tool
call with ``setsid``) are re-parented to the watchdog, not to init, when COMMAND dies. It ends
all its descendants (SIGTERM, then SIGKILL after GRACE seconds) when

* its parent (our engine) is gone, even after ``kill -9``: ``getppid()`` stops being PARENT_PID;
* it gets SIGTERM, SIGINT or SIGHUP (the engine's graceful stop sends SIGTERM to the group).

When COMMAND exits by itself, its leftovers are killed and the watchdog exits with COMMAND's
status. So no process started for an agent can outlive the engine that started it.

With ``--adopt PID`` it guards a server that outlived the engine that started it (and its first
watchdog), for the engine that re-attached to it: on the same triggers it ends PID, PID's
descendants and the members of PID's process group (SIGTERM, then SIGKILL after GRACE), and it
exits when PID is gone.

Signals (SIGTERM, SIGCHLD ...) wake it at once through a wakeup pipe, so a stop costs OpenCode's
own exit and no polling interval; the parent check runs every 0.1 s, and /proc is scanned only
once COMMAND is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def proc_table() -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, pgid)}`` of live (non-zombie) processes; empty off Linux."""
    table: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z":
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, the caller excluded; empty off Linux."""
    me = os.getpid()
    return [pid for pid, (_, group) in proc_table().items() if group == pgid and pid != me]


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, their children, ...); empty off Linux."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in proc_table().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    return [child for child, (parent, _) in proc_table().items() if parent == pid]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie counts as alive there)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


def group_alive(pgid: int) -> bool:
    """Whether any live process is left in process group ``pgid``."""
    if os.path.isdir("/proc"):
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def process_tree(root: int, pgid: int) -> set[int]:
    """Live descendants of ``root`` and members of process group ``pgid``, the caller excluded, from
    one read of /proc; empty off Linux."""
    table = proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        kids.setdefault(parent, []).append(pid)
    found = {pid for pid, (_, group) in table.items() if group == pgid}
    todo = list(kids.get(root, ()))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(kids.get(pid, ()))
    return found - {os.getpid()}


def _signal_all(sig: int) -> None:
    targets = process_tree(os.getpid(), os.getpgrp())
    if not targets and not os.path.isdir("/proc"):
        with contextlib.suppress(OSError):  # off Linux the group is all we can see
            os.killpg(os.getpgrp(), sig)
        return
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _reap(child: subprocess.Popen[bytes]) -> None:
    """Collect exited children (ours and adopted ones); note COMMAND's status on ``child``."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def _wait(wakeup: int, timeout: float) -> None:
    """Sleep until a signal arrives (its handler wrote to the ``wakeup`` pipe) or ``timeout`` passes."""
    if select.select([wakeup], [], [], max(0.0, timeout))[0]:
        with contextlib.suppress(BlockingIOError):
            os.read(wakeup, 512)


def _end_all(child: subprocess.Popen[bytes], grace: float, wakeup: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := deadline - time.monotonic()) > 0:
        _reap(child)
        # /proc is read only once COMMAND is gone; every exit of a child wakes us up (SIGCHLD)
        if child.returncode is not None and not descendants(os.getpid()):
            return
        _wait(wakeup, min(left, 0.05))
    _signal_all(signal.SIGKILL)
    _reap(child)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _end_adopted(pid: int, pgid: int | None, grace: float, wakeup: int) -> None:
    """SIGTERM to ``pid``, its descendants and its group; SIGKILL to whatever is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        targets = process_tree(pid, pgid if pgid is not None else -1) | {pid}
        for target in targets:
            with contextlib.suppress(OSError):
                os.kill(target, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(process_alive(target) for target in targets):
                return
            _wait(wakeup, 0.05)


def adopt(parent: int, grace: float, pid: int, wakeup: int) -> int:
    """Guard ``pid`` (not our child: polled) until it exits, or end it when told or orphaned."""
    pgid = _pgid(pid)
    while process_alive(pid):
        if _stop_requested or os.getppid() != parent:
            _end_adopted(pid, pgid, grace, wakeup)
            return 0
        _wait(wakeup, 0.1)
    return 0


def main(argv: list[str]) -> int:
    adopting = len(argv) == 4 and argv[2] == "--adopt"
    if len(argv) < 4 or (argv[2] != "--" and not adopting):
        print(__doc__, file=sys.stderr)
        return 2
    parent, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    wakeup, wake = os.pipe()  # not inherited by COMMAND (PEP 446)
    os.set_blocking(wakeup, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request_stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loops below
    if os.getppid() != parent:
        return 3
    if adopting:
        return adopt(parent, grace, int(command[0]), wakeup)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    while child.returncode is None:
        if _stop_requested or os.getppid() != parent:
            _end_all(child, grace, wakeup)
            return 0
        _wait(wakeup, 0.1)
        _reap(child)
    _signal_all(signal.SIGKILL)  # leftovers of a COMMAND that ended by itself
    _reap(child)
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
