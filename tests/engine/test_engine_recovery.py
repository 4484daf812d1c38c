"""Crashes and restarts: `ledger serve` killed with SIGKILL mid-delegation, then an engine restarted
on the same ledger; graceful stops. No orphan `opencode serve` may survive, no session may stay
"running", and the ledger must verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    REPO,
    first,
    live_sessions,
    opencode_processes,
    quiet_logfire,  # noqa: F401 - a fixture
    root_request,
    running_engine,
    types_of,
    wait_no_opencode,
    wait_status,
    wait_until,
)
from fastmcp import Client

from engine.scripted_model import HangStep, ScriptedModel

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("quiet_logfire")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def ledger_serve(
    base: Path, model: ScriptedModel, *extra: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, str]]:
    """`ledger serve --transport http` as its own process on ``base``'s ledger, work dir and project
    (the same layout as ``running_engine``); yields (process, MCP URL, bearer token)."""
    port, token = free_port(), secrets.token_urlsafe(16)
    (base / "project").mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "cli.app",
        "--db",
        str(base / "ledger.db"),
        "serve",
        "--transport",
        "http",
        "--port",
        str(port),
        "--token",
        token,
        "--isolated",
        "--work-dir",
        str(base / "agents"),
        "--scripted-model",
        model.base_url,
        "--allow-root",
        str(base / "project"),
        *extra,
    ]
    env = {**os.environ, "LOGFIRE_IGNORE_NO_CONFIG": "1", "COLUMNS": "400"}
    with open(base / "serve.log", "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/mcp"
    try:

        async def ready() -> bool:
            assert proc.poll() is None, (base / "serve.log").read_text()
            try:
                async with Client(url, auth=token) as c:
                    await c.list_tools()
            except Exception:
                return False
            return True

        for _ in range(300):
            if await ready():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("ledger serve did not come up:\n" + (base / "serve.log").read_text())
        yield proc, url, token
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


class TestCrash:
    async def test_sigkill_mid_delegation_then_restart(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """SIGKILL of `ledger serve` with one agent running and one queued: the agents' servers die with it
        (the watchdog), and the next engine on that ledger records both as interrupted by the restart."""
        scripted_model.add([HangStep(keepalive=0.2)], match=f"{marker}-run")
        scripted_model.add([HangStep(keepalive=0.2)], match=f"{marker}-queued")
        project, work = tmp_path / "project", tmp_path / "agents"
        async with asyncio.timeout(120):
            async with ledger_serve(tmp_path, scripted_model, "--max-concurrent", "1") as (proc, url, token):
                async with Client(url, auth=token) as c:
                    run = (
                        await c.call_tool(
                            "spawn_agent", root_request(project, "reviewer", f"{marker}-run review")
                        )
                    ).data["session_id"]
                    queued = (
                        await c.call_tool(
                            "spawn_agent", root_request(project, "researcher", f"{marker}-queued research")
                        )
                    ).data["session_id"]
                    await asyncio.to_thread(
                        scripted_model.wait_for_completions, 1, conversation=f"{marker}-run", timeout=60
                    )
                    running = (await c.call_tool("query_session", {"session_id": run})).data
                    assert running["status"] == "running"
                    assert (await c.call_tool("query_session", {"session_id": queued})).data[
                        "status"
                    ] == "queued"
                assert opencode_processes(work), "the running agent's opencode serve should be alive"
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                await wait_no_opencode(work, 20)
                assert not Path(f"/proc/{running['pid']}").exists()
            async with running_engine(tmp_path, scripted_model) as engine:
                led = engine.ledger
                assert led is not None
                assert sorted(engine.recovery["interrupted"]) == sorted([run, queued])
                assert live_sessions(led) == []
                for sid, why in (
                    (run, "server or session is gone"),
                    (queued, "before this delegation started"),
                ):
                    st = led.session(sid)
                    assert st is not None
                    assert st.status == "interrupted"
                    reason = first(led, sid, "session.interrupted")["reason"]
                    assert "restarted" in reason
                    assert why in reason
                    assert types_of(led, sid)[-1] == "session.interrupted"
                assert "agent.spawned" in types_of(led, run)
                assert "agent.spawned" not in types_of(led, queued)
                report = led.verify()
                assert report.ok, report
            # a second restart finds nothing left to settle
            async with running_engine(tmp_path, scripted_model) as engine:
                assert engine.recovery["interrupted"] == []
        assert opencode_processes(work) == []

    async def test_sigint_stops_serve_gracefully(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """Ctrl-C on `ledger serve` stops its agents (recorded as stopped) and their servers, then exits."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        work = tmp_path / "agents"
        async with asyncio.timeout(90):
            async with ledger_serve(tmp_path, scripted_model) as (proc, url, token):
                async with Client(url, auth=token) as c:
                    sid = (
                        await c.call_tool(
                            "spawn_agent", root_request(tmp_path / "project", "reviewer", f"{marker} review")
                        )
                    ).data["session_id"]
                    await asyncio.to_thread(
                        scripted_model.wait_for_completions, 1, conversation=marker, timeout=60
                    )
                proc.send_signal(signal.SIGINT)
                assert await asyncio.to_thread(proc.wait, 30) == 0
                assert opencode_processes(work) == []
            async with running_engine(tmp_path, scripted_model) as engine:
                led = engine.ledger
                assert led is not None
                assert engine.recovery["interrupted"] == []
                st = led.session(sid)
                assert st is not None
                assert st.status == "stopped"
                assert first(led, sid, "agent.stopped")["reason"] == "engine shutdown"
                assert led.verify().ok


class TestGracefulStop:
    async def test_engine_stop_leaves_no_opencode_process(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """Engine.stop() ends running agents (recorded stopped) and the discovery server: nothing left."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        work = tmp_path / "agents"
        async with asyncio.timeout(90):
            async with running_engine(tmp_path, scripted_model) as engine:
                led = engine.ledger
                assert led is not None
                async with Client(engine.mcp) as c:
                    sid = (
                        await c.call_tool(
                            "spawn_agent", root_request(tmp_path / "project", "reviewer", f"{marker} review")
                        )
                    ).data["session_id"]
                    roles = (await c.call_tool("list_available_agent_roles", {})).data["roles"]
                assert "build" in {r["name"] for r in roles}  # the discovery server answered
                await wait_status(led, sid, {"running"})
                await asyncio.to_thread(
                    scripted_model.wait_for_completions, 1, conversation=marker, timeout=60
                )
                alive: list[Any] = opencode_processes(work)
                assert len(alive) >= 4  # two watchdogs, two opencode servers
            assert opencode_processes(work) == []
            for pid in alive:
                assert not Path(f"/proc/{pid}").exists()
            async with running_engine(tmp_path, scripted_model) as engine:
                led = engine.ledger
                assert led is not None
                st = led.session(sid)
                assert st is not None
                assert st.status == "stopped"
                assert st.end_reason == "engine shutdown"
                assert engine.recovery["interrupted"] == []
                await wait_until(lambda: led.verify().ok, 5, "the ledger to verify")
