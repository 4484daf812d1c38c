"""Guard of one `opencode serve` process group (stdlib only; run by path, not imported).

Usage: ``python _watchdog.py PARENT_PID GRACE -- COMMAND...``

Started in a new session, so it leads a process group; it runs COMMAND in that group and waits.
It ends the whole group (SIGTERM, then SIGKILL after GRACE seconds) when

* its parent (our engine) is gone, even after ``kill -9``: ``getppid()`` stops being PARENT_PID;
* it gets SIGTERM, SIGINT or SIGHUP (the engine's graceful stop sends SIGTERM to the group).

When COMMAND exits by itself, whatever else is left in the group is killed and the watchdog exits
with COMMAND's status. This is why no `opencode` process can outlive the engine that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, the caller excluded; empty off Linux."""
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def _kill_others(sig: int) -> None:
    for pid in group_members(os.getpgrp()):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _end_group(child: subprocess.Popen[bytes], grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child.poll() is not None and not group_members(os.getpgrp()):
            return
        time.sleep(0.05)
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the watchdog goes too: nothing left to guard


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    parent, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request_stop)
    if os.getppid() != parent:
        return 3
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    while True:
        try:
            code = child.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if _stop_requested or os.getppid() != parent:
                _end_group(child, grace)
                return 0
            continue
        _kill_others(signal.SIGKILL)
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
