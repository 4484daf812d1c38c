"""An `opencode serve` that outlived the engine which started it, taken over by the next engine.

Its first watchdog is gone (else it would have ended the server with its engine), so nothing would
stop it if this engine died in turn. Adopting it starts a guard (``engine/_watchdog.py --adopt``)
that ends the server, its descendants and its process group when this engine goes, even by
``kill -9``; ``stop()`` ends it the same way at once.

A pid is adopted only when it is the very server the recorded credentials open: its environment
holds that server's password, so a pid reused by another process is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

from engine._watchdog import descendants, process_alive

WATCHDOG = Path(__file__).resolve().parent / "_watchdog.py"


def is_server(pid: int, password: str) -> bool:
    """Whether ``pid`` is a live `opencode serve` started with ``password``."""
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        b"serve" in cmdline
        and any(b"opencode" in arg for arg in cmdline)
        and f"OPENCODE_SERVER_PASSWORD={password}".encode() in environ
    )


class AdoptedServer:
    """A re-attached agent's server, guarded for this engine."""

    def __init__(self, pid: int, password: str, guard: subprocess.Popen[bytes], grace: float) -> None:
        self.pid = pid
        self.password = password
        self.guard = guard
        self.grace = grace

    @classmethod
    def adopt(cls, pid: int, password: str, grace: float) -> Self | None:
        """Guard ``pid`` when it is the server of ``password``; None when it is not (or is gone)."""
        if not is_server(pid, password):
            return None
        guard = subprocess.Popen(
            [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), str(grace), "--adopt", str(pid)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(pid, password, guard, grace)

    def is_alive(self) -> bool:
        return process_alive(self.pid)

    async def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after the grace period) and its guard."""
        if self.guard.poll() is None:
            with contextlib.suppress(OSError):
                self.guard.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.guard.wait, self.grace + 3.0)
            except subprocess.TimeoutExpired:
                self.guard.kill()
                await asyncio.to_thread(self.guard.wait)
        if is_server(self.pid, self.password):  # the guard ended it; this is a safety net
            for pid in (*descendants(self.pid), self.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
