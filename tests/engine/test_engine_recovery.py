"""Crashes and restarts: `ledger serve` killed with SIGKILL mid-delegation, then an engine restarted
on the same ledger; graceful stops. No orphan `opencode serve` may survive, no session may stay
"running", and the ledger must verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    events,
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
from fastmcp.exceptions import ToolError

from engine.opencode_client import OpenCodeClient
from engine.recovery import summary as recovery_summary
from engine.scripted_model import EchoToolResultStep, HangStep, ScriptedModel, TextStep, ToolCallStep
from ledger import Ledger
from schemas.events import DelegationRevoked

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


async def spawn_reviewer(client: Client, base: Path, marker: str) -> str:
    """A reviewer delegation in ``base``'s project whose model conversation is ``marker``'s."""
    request = root_request(base / "project", "reviewer", f"{marker} review")
    return str((await client.call_tool("spawn_agent", request)).data["session_id"])


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
                    sid = await spawn_reviewer(c, tmp_path, marker)
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
                    sid = await spawn_reviewer(c, tmp_path, marker)
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


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


@contextlib.asynccontextmanager
async def outliving_agent(
    base: Path,
    model: ScriptedModel,
    request: dict[str, Any],
    conversation: str,
    *,
    replies: int = 1,
    calls: int = 0,
) -> AsyncIterator[tuple[str, int]]:
    """An agent whose server outlives its engine: `ledger serve` spawns it from ``request``; once
    ``replies`` model requests of ``conversation`` arrived and ``calls`` tool calls are recorded,
    its watchdog and then `ledger serve` are killed with -9. Yields (session id, the server's pid);
    the server is killed on the way out if a failing test left it running."""
    async with ledger_serve(base, model) as (proc, url, token):
        async with Client(url, auth=token) as c:
            sid = (await c.call_tool("spawn_agent", request)).data["session_id"]
            await asyncio.to_thread(
                model.wait_for_completions, replies, conversation=conversation, timeout=60
            )
            for _ in range(100):  # the call's end event may follow the next model request
                state = (await c.call_tool("query_session", {"session_id": sid})).data
                if state["tool_calls"] >= calls:
                    break
                await asyncio.sleep(0.1)
            pid = state["pid"]
        os.kill(parent_of(pid), signal.SIGKILL)  # the watchdog first: the server survives it
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    try:
        await asyncio.sleep(0.3)
        assert Path(f"/proc/{pid}").exists(), "the agent's server should have outlived its engine"
        yield sid, pid
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def server_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


class TestReattach:
    async def test_an_agent_that_outlived_its_engine_is_supervised_by_the_next(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """The engine and the agent's watchdog die (kill -9) while the agent waits for a slow model
        reply: the next engine re-attaches to the agent's server, records what it does from then on
        (a bash call, then a call of our MCP tools, which must work with the new engine's token and
        address), records its completion, and stops its server; nothing is left running."""
        project = tmp_path / "project"
        flag = project / f"{marker}.ran"
        scripted_model.add(
            [
                ToolCallStep.of("bash", {"command": f"touch {flag}", "description": "touch"}, delay=8.0),
                ToolCallStep.of("ledger_verify_ledger", {}),
                EchoToolResultStep(prefix="verified: "),
            ],
            match=marker,
        )
        request = root_request(project, "tester", f"{marker} run it")
        async with asyncio.timeout(150):
            async with (
                outliving_agent(tmp_path, scripted_model, request, marker) as (sid, pid),
                running_engine(tmp_path, scripted_model) as engine,
            ):
                led = engine.ledger
                assert led is not None
                assert engine.recovery["interrupted"] == []
                assert engine.recovery["reattached"] == [sid]
                assert (
                    recovery_summary(engine.recovery)
                    == "recovery after a restart: 1 running agent(s) re-attached"
                )
                adopted = [d for _, d in events(led, sid, ["session.adopted"])]  # the engine is now its
                assert [(d["engine"], d["reason"]) for d in adopted] == [
                    (engine.engine_id, "the engine restarted")
                ]
                assert led.session(sid).engine == engine.engine_id  # type: ignore[union-attr]
                assert await wait_status(led, sid, {"completed", "failed", "stopped"}, 90) == "completed"
                assert flag.exists()
                calls = [(d["tool"], d["status"]) for _, d in events(led, sid, ["tool.called"])]
                assert calls == [("bash", "completed"), ("ledger_verify_ledger", "completed")]
                text = " ".join(d["text"] for _, d in events(led, sid, ["output.received"]))
                assert "verified: " in text
                assert '"ok":true' in text.replace(" ", "")
                await wait_until(lambda: server_gone(pid), 20, "the agent's server to stop")
                assert led.verify().ok
        assert opencode_processes(tmp_path / "agents") == []

    async def test_what_the_agent_did_while_no_engine_listened_is_recorded_once(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """The agent's turn ends (a bash call, then its answer) while no engine runs: the next engine
        re-attaches, catches up from the session's messages (each call and reply recorded once, none
        of those the first engine recorded again), records the completion and stops the server."""
        project = tmp_path / "project"
        second_flag = project / f"{marker}.2"
        scripted_model.add(
            [
                ToolCallStep.of("bash", {"command": f"touch {project / marker}.1", "description": "one"}),
                ToolCallStep.of("bash", {"command": f"touch {second_flag}", "description": "two"}, delay=3.0),
                TextStep(text=f"{marker} all done"),
            ],
            match=marker,
        )
        request = root_request(project, "tester", f"{marker} run it")
        ledger_path = tmp_path / "ledger.db"

        def recorded_calls() -> list[str]:
            with Ledger.open(ledger_path, create=False) as led:
                return [d["call_id"] for _, d in events(led, sid, ["tool.called"])]

        async with asyncio.timeout(150):
            async with outliving_agent(tmp_path, scripted_model, request, marker, replies=2, calls=1) as (
                sid,
                pid,
            ):
                calls_then = recorded_calls()
                assert len(calls_then) == 1, "the first engine recorded the first call"
                await asyncio.to_thread(
                    scripted_model.wait_for_completions, 3, conversation=marker, finished=True, timeout=60
                )
                await wait_until(lambda: second_flag.exists(), 20, "the second call to run with no engine")
                await asyncio.sleep(1.0)  # the turn ends: the session goes idle with nobody listening
                async with running_engine(tmp_path, scripted_model) as engine:
                    led = engine.ledger
                    assert led is not None
                    assert engine.recovery["reattached"] == [sid]
                    assert await wait_status(led, sid, {"completed", "failed", "stopped"}, 30) == "completed"
                    calls = [(d["call_id"], d["status"]) for _, d in events(led, sid, ["tool.called"])]
                    assert len(calls) == 2
                    assert calls[0][0] == calls_then[0]
                    assert calls[1][0] != calls_then[0]
                    assert all(status == "completed" for _, status in calls)
                    outputs = [(d["message_id"], d["text"]) for _, d in events(led, sid, ["output.received"])]
                    assert outputs[-1][1] == f"{marker} all done"
                    assert len({m for m, _ in outputs}) == len(outputs)
                    await wait_until(lambda: server_gone(pid), 20, "the agent's server to stop")
                    assert led.verify().ok
        assert opencode_processes(tmp_path / "agents") == []

    async def test_the_timeout_runs_from_the_agents_start_not_from_the_restart(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """A re-attached agent that never answers fails when its own timeout is over, counted from its
        start under the first engine; its server is stopped."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        request = root_request(tmp_path / "project", "reviewer", f"{marker} review")
        request["timeout_seconds"] = 12
        async with asyncio.timeout(120):
            async with outliving_agent(tmp_path, scripted_model, request, marker) as (sid, pid):
                await asyncio.sleep(5.0)  # a restart that takes a while: a fresh timeout would end 5 s late
                async with running_engine(tmp_path, scripted_model) as engine:
                    led = engine.ledger
                    assert led is not None
                    assert engine.recovery["reattached"] == [sid]
                    assert await wait_status(led, sid, {"completed", "failed", "stopped"}, 30) == "failed"
                    failed = first(led, sid, "agent.failed")
                    assert failed["kind"] == "timeout"
                    assert "12 s timeout" in failed["error"]
                    spawned_at = next(led.entries(stream=sid, types=["agent.spawned"])).recorded_at_us
                    failed_at = next(led.entries(stream=sid, types=["agent.failed"])).recorded_at_us
                    assert 11.5 <= (failed_at - spawned_at) / 1e6 < 16.5
                    await wait_until(lambda: server_gone(pid), 20, "the agent's server to stop")
        assert opencode_processes(tmp_path / "agents") == []

    async def test_a_surviving_server_that_lost_the_session_is_stopped_and_interrupted(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """The server outlived its engine but its session is gone: nothing to re-attach to. The next
        `ledger serve` records the session as interrupted, says so on stderr, and stops that server
        (ours: its password matches)."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        request = root_request(tmp_path / "project", "reviewer", f"{marker} review")
        async with asyncio.timeout(120):
            async with outliving_agent(tmp_path, scripted_model, request, marker) as (sid, pid):
                creds = json.loads((tmp_path / "agents" / sid / "server.json").read_text())
                async with OpenCodeClient(
                    creds["url"], creds["password"], directory=creds["directory"]
                ) as oc:
                    await oc.abort(creds["opencode_session_id"])
                    assert await oc.delete_session(creds["opencode_session_id"])
                async with ledger_serve(tmp_path, scripted_model) as (_, url, token):
                    async with Client(url, auth=token) as c:
                        state = (await c.call_tool("query_session", {"session_id": sid})).data
                    assert state["status"] == "interrupted"
                    assert "server or session is gone" in state["end_reason"]
                    await wait_until(lambda: server_gone(pid), 20, "the orphaned server to stop")
                    log = (tmp_path / "serve.log").read_text()
                    assert "recovery after a restart: 1 session(s) recorded as interrupted" in log
            await wait_no_opencode(tmp_path / "agents", 20)  # `ledger serve` was killed: its watchdogs act


class TestTwoEngines:
    async def test_an_engine_leaves_alone_the_sessions_of_another_that_still_runs(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """Two engines on one ledger (two MCP clients, each with its own `ledger serve`): the second to
        start does not interrupt, adopt or stop the first one's running agent; once the first engine is
        gone, a third has nothing left to settle (the first recorded its stop)."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        async with asyncio.timeout(120):
            async with running_engine(tmp_path, scripted_model) as first_engine:
                led = first_engine.ledger
                assert led is not None
                async with Client(first_engine.mcp) as c:
                    sid = await spawn_reviewer(c, tmp_path, marker)
                await wait_status(led, sid, {"running"})
                st = led.session(sid)
                assert st is not None
                assert st.engine == first_engine.engine_id
                async with running_engine(tmp_path, scripted_model) as second:
                    assert second.recovery["interrupted"] == []
                    assert second.recovery["reattached"] == []
                    assert second.recovery["left_to_their_engine"] == [sid]
                    assert recovery_summary(second.recovery) == (
                        "recovery after a restart: 1 session(s) left to the engine that still runs them"
                    )
                assert types_of(led, sid)[-1] == "agent.spawned"  # nothing recorded by the second
                health = await first_engine.service.manager.health(sid)  # type: ignore[union-attr]
                assert health["alive"] is True
            async with running_engine(tmp_path, scripted_model) as third:
                assert third.recovery["interrupted"] == []
                assert third.recovery["left_to_their_engine"] == []
                st = third.ledger.session(sid)  # type: ignore[union-attr]
                assert st is not None
                assert st.status == "stopped"
                assert st.end_reason == "engine shutdown"
        assert opencode_processes(tmp_path / "agents") == []

    async def test_a_session_of_another_engine_is_revoked_and_waited_for_not_stopped_by_hand(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """With two engines running on one ledger, the one that does not run an agent refuses to stop
        it or message it (naming the other engine, recording nothing), waits for it through the ledger,
        and revokes it: the engine that runs it stops it."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        async with asyncio.timeout(120):
            async with (
                running_engine(tmp_path, scripted_model) as owner,
                running_engine(tmp_path, scripted_model) as other,
                Client(owner.mcp) as mine,
                Client(other.mcp) as theirs,
            ):
                led = owner.ledger
                assert led is not None
                sid = await spawn_reviewer(mine, tmp_path, marker)
                await wait_status(led, sid, {"running"})
                before = types_of(led, sid)
                for tool, args in (
                    ("stop_agent", {"session_id": sid}),
                    ("send_to_agent", {"session_id": sid, "message": "hello"}),
                ):
                    with pytest.raises(
                        ToolError, match=f"process {os.getpid()}.*another engine on this ledger"
                    ):
                        await theirs.call_tool(tool, args)
                assert types_of(led, sid) == before
                waited = (
                    await theirs.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 0.5})
                ).data
                assert waited["status"] == "running"
                assert waited["done"] is False  # waited on the ledger, not "nothing to wait for"
                pid = led.session(sid).pid  # type: ignore[union-attr]
                await theirs.call_tool("revoke_delegation", {"session_id": sid, "reason": "not needed"})
                manager = owner.service.manager  # type: ignore[union-attr]
                await wait_until(lambda: not manager.supervises(sid), 15, "the owner to stop its agent")
                await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the agent's server to stop")
                assert led.session(sid).status == "revoked"  # type: ignore[union-attr]
        assert opencode_processes(tmp_path / "agents") == []

    async def test_the_sessions_of_an_engine_that_dies_are_settled_by_one_that_runs(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """Two engines wait for a session that `ledger serve` (another process) runs; that process is
        killed with -9 (its watchdog then ends the agent's server): the waiting call returns the
        session as interrupted, naming the dead engine's process; exactly one of the two engines
        recorded it (the record is conditional), the session's folder is tidied, and a later wait
        answers at once."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        async with (
            asyncio.timeout(120),
            running_engine(tmp_path, scripted_model) as watcher,
            running_engine(tmp_path, scripted_model) as other_watcher,
        ):
            told: list[str] = []
            for e in (watcher, other_watcher):
                e.service.orphans.notify = told.append  # type: ignore[union-attr]
            async with ledger_serve(tmp_path, scripted_model) as (proc, url, token):
                async with Client(url, auth=token) as c:
                    sid = await spawn_reviewer(c, tmp_path, marker)
                    await asyncio.to_thread(
                        scripted_model.wait_for_completions, 1, conversation=marker, timeout=60
                    )
                async with Client(watcher.mcp) as mine:
                    waiting = asyncio.create_task(
                        mine.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 60})
                    )
                    await asyncio.sleep(1.0)
                    assert not waiting.done()  # the other engine is alive: waiting on the ledger
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(10) == -signal.SIGKILL
                    waited = (await asyncio.wait_for(waiting, 15)).data
                    assert waited["done"] is True
                    assert waited["status"] == "interrupted"
                    assert (
                        f"its engine (process {proc.pid}) stopped without recording its end"
                        in (waited["end_reason"])
                    )
                    again = (
                        await mine.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 5})
                    ).data
                    assert again["status"] == "interrupted"
            led = watcher.ledger
            assert led is not None
            await asyncio.sleep(2 * 1.0)  # both followers have looked again: nothing more is recorded
            assert types_of(led, sid).count("session.interrupted") == 1
            # its server dies with its watchdog: adopted first only if it was still exiting
            assert types_of(led, sid).count("session.adopted") <= 1
            hows = [
                e.service.orphans.settled.get(sid)  # type: ignore[union-attr]
                for e in (watcher, other_watcher)
            ]
            assert hows.count("interrupted") == 1, hows  # the other found it settled, or never looked
            assert told == [
                f"session {sid} of the engine of process {proc.pid}, which stopped without recording its "
                "end: interrupted"
            ]
            assert set(hows) <= {"interrupted", "taken", None}, hows
            await wait_until(
                lambda: sorted(p.name for p in (tmp_path / "agents" / sid).iterdir()) == ["opencode.log"],
                10,
                "the dead engine's agent folder to be tidied",
            )
            await wait_no_opencode(tmp_path / "agents", 20)

    async def test_an_agent_that_outlives_its_engine_is_adopted_by_one_that_runs(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """`ledger serve` and the agent's watchdog die (kill -9) while another engine runs on the same
        ledger: within a poll that engine adopts the session (`session.adopted`, naming both
        engines), supervises the agent, and can stop it; nothing is left running."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        request = root_request(tmp_path / "project", "reviewer", f"{marker} review")
        async with asyncio.timeout(120), running_engine(tmp_path, scripted_model) as engine:
            led = engine.ledger
            assert led is not None
            manager = engine.service.manager  # type: ignore[union-attr]
            async with outliving_agent(tmp_path, scripted_model, request, marker) as (sid, pid):
                await wait_until(lambda: manager.supervises(sid), 15, "the running engine to adopt the agent")
                st = led.session(sid)
                assert st is not None
                assert st.status == "running"
                assert st.engine == engine.engine_id
                adopted = [d for _, d in events(led, sid, ["session.adopted"])]
                assert len(adopted) == 1
                assert adopted[0]["engine"] == engine.engine_id
                assert adopted[0]["previous_engine"] not in (None, engine.engine_id)
                async with Client(engine.mcp) as c:
                    stopped = (await c.call_tool("stop_agent", {"session_id": sid})).data
                assert stopped["status"] == "stopped"
                await wait_until(lambda: server_gone(pid), 15, "the adopted agent's server to stop")
                assert led.replay(check=True).ok
        assert opencode_processes(tmp_path / "agents") == []

    async def test_the_server_of_a_session_that_ended_while_no_engine_ran_is_stopped(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """The session is revoked (`ledger` API) while its engine and watchdog are dead and its server
        still runs: the next engine stops that server (it is ours: its password matches) and tidies
        the session's folder, without re-attaching or interrupting anything."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        request = root_request(tmp_path / "project", "reviewer", f"{marker} review")
        async with asyncio.timeout(120):
            async with outliving_agent(tmp_path, scripted_model, request, marker) as (sid, pid):
                with Ledger.open(tmp_path / "ledger.db", create=False) as led:
                    led.append(
                        sid, DelegationRevoked(session_id=sid, by="operator", reason="revoked offline")
                    )
                async with running_engine(tmp_path, scripted_model) as engine:
                    assert engine.recovery["leftover_servers_stopped"] == [sid]
                    assert engine.recovery["reattached"] == []
                    assert engine.recovery["interrupted"] == []
                    assert recovery_summary(engine.recovery) == (
                        "recovery after a restart: 1 leftover server(s) of ended sessions stopped"
                    )
                    await wait_until(lambda: server_gone(pid), 10, "the leftover server to stop")
                    assert sorted(p.name for p in (tmp_path / "agents" / sid).iterdir()) == ["opencode.log"]
                    assert engine.ledger.session(sid).status == "revoked"  # type: ignore[union-attr]
        assert opencode_processes(tmp_path / "agents") == []
