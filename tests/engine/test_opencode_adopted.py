"""Servers adopted after a restart: identified by their password, guarded by ``_watchdog.py --adopt``,
ended on ``stop()`` and when the adopting engine dies (kill -9). Stand-in processes carry the command
line and environment of an `opencode serve`; nothing else about them matters to the guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine._watchdog import descendants, process_alive
from engine.opencode_adopted import WATCHDOG, AdoptedServer, is_server

# a server stand-in: "opencode serve" in its command line, a child of its own, and it ignores nothing
SERVER = "import subprocess, sys, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "opencode", "serve"],
        env={**os.environ, "OPENCODE_SERVER_PASSWORD": "pw-1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc
    for pid in (*descendants(proc.pid), proc.pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


class TestIdentity:
    def test_only_the_server_of_the_recorded_password_is_adopted(
        self, server: subprocess.Popen[bytes]
    ) -> None:
        assert is_server(server.pid, "pw-1")
        assert not is_server(server.pid, "pw-2")  # another server, or the pid was reused
        assert AdoptedServer.adopt(server.pid, "pw-2", 1.0) is None
        sleeper = subprocess.Popen(["sleep", "30"], env={**os.environ, "OPENCODE_SERVER_PASSWORD": "pw-1"})
        try:
            assert not is_server(sleeper.pid, "pw-1")  # not an opencode serve
        finally:
            sleeper.kill()
            sleeper.wait()
        assert not is_server(2**22 + 7, "pw-1")  # no such process


class TestGuard:
    async def test_stop_ends_the_server_its_children_and_the_guard(
        self, server: subprocess.Popen[bytes]
    ) -> None:
        adopted = AdoptedServer.adopt(server.pid, "pw-1", 1.0)
        assert adopted is not None
        tree = [server.pid, *descendants(server.pid)]
        assert len(tree) == 2
        await asyncio.sleep(0.3)
        assert adopted.is_alive()
        await adopted.stop()
        server.wait(5)  # our child in this test: reaped here
        assert wait_gone(tree) == []
        assert adopted.guard.poll() is not None

    def test_kill_9_of_the_adopting_engine_ends_the_server(self, server: subprocess.Popen[bytes]) -> None:
        """The engine that adopted the server dies by kill -9: the guard ends the server and its child."""
        engine = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import subprocess, sys, time, os; "
                f"subprocess.Popen([sys.executable, '-I', {str(WATCHDOG)!r}, str(os.getpid()), '1.0', "
                f"'--adopt', '{server.pid}']); time.sleep(300)",
            ]
        )
        tree = [server.pid, *descendants(server.pid)]
        time.sleep(1.0)  # the guard is up
        assert all(process_alive(p) for p in tree)
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        server.wait(10)
        assert wait_gone(tree) == []

    def test_the_guard_exits_when_the_server_exits_by_itself(self, tmp_path: Path) -> None:
        short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
        guard = subprocess.Popen(
            [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), "1.0", "--adopt", str(short.pid)]
        )
        short.wait(5)
        assert guard.wait(5) == 0
