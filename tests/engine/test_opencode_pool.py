"""The warm pool of single-use OpenCode servers (engine/opencode_pool.py), with real processes.

A taken server belongs to one agent only and is stopped with it; the pool refills in the
background, replaces servers that die in it, falls back to a cold start when empty, and leaves no
process behind when closed or when its engine is killed. A pooled agent gets its own project
directory, permission rules and MCP token at run time (nested delegation through a pooled agent:
``test_engine_nested.py`` runs its whole module on a pooled engine too).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from engine_support import (
    child_request,
    first,
    live_sessions,
    opencode_processes,
    quiet_logfire,  # noqa: F401 - a fixture
    root_request,
    running_engine,
    wait_no_opencode,
    wait_spawned,
    wait_until,
)
from fastmcp import Client
from test_engine_recovery import ledger_serve

from engine._watchdog import process_alive
from engine.backend import AgentSpec
from engine.opencode_backend import OpenCodeBackend
from engine.opencode_warmup import WARMUP_TITLE
from engine.scripted_model import EchoToolResultStep, ScriptedModel, ToolCallStep

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_logfire")]
module_loop = pytest.mark.asyncio(loop_scope="module")


def spec(session_id: str, project: Path, permission: dict[str, object] | None = None) -> AgentSpec:
    return AgentSpec(
        session_id=session_id,
        role="tester",
        title=f"pool test {session_id}",
        prompt="unused",
        project_directory=str(project),
        model=None,
        permission=permission or {"bash": "deny", "edit": "allow"},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pooled(
    tmp_path_factory: pytest.TempPathFactory, module_model: ScriptedModel
) -> AsyncIterator[tuple[OpenCodeBackend, Path]]:
    """A backend with a pool of 2, warmed up in its project directory, filled before the tests."""
    base = tmp_path_factory.mktemp("pool")
    project = base / "project"
    project.mkdir()
    backend = OpenCodeBackend(
        base / "agents", model_base_url=module_model.base_url, isolated=True, stop_grace=1.0, pool_size=2
    )
    backend.start_pool(str(project))
    try:
        assert await backend.pool.wait_ready(timeout=120), backend.pool.statistics()
        yield backend, project
    finally:
        await backend.close()


@module_loop
class TestPool:
    async def test_taken_servers_are_fresh_and_single_use(self, pooled: tuple[OpenCodeBackend, Path]) -> None:
        """Two agents get two different pooled servers; those leave the pool, which refills with new
        ones; an agent's server is stopped when the agent closes."""
        backend, project = pooled
        before = {s.info.pid for s in backend.pool.services()}
        assert len(before) == 2
        one = await backend.start(spec("pool-a", project))
        two = await backend.start(spec("pool-b", project))
        assert backend.origins["pool-a"] == backend.origins["pool-b"] == "pool"
        assert {one.pid, two.pid} == before
        assert one.opencode_session_id != two.opencode_session_id
        assert await backend.pool.wait_ready(timeout=120)
        after = {s.info.pid for s in backend.pool.services()}
        assert not after & before  # never handed out twice
        await one.close()
        await two.close()
        assert one.pid is not None
        assert two.pid is not None
        await wait_until(
            lambda: not process_alive(one.pid) and not process_alive(two.pid), 10, "stopped servers"
        )  # type: ignore[arg-type]

    async def test_warm_up_leaves_nothing_in_the_agents_directory(
        self, pooled: tuple[OpenCodeBackend, Path]
    ) -> None:
        """The warm-up exchange ran (on the warm-up provider, not the agent's model) and its session
        is gone: the agent's OpenCode instance holds the agent's session only, with its own rules."""
        backend, project = pooled
        assert backend.pool.stats.warmup_failures == 0
        assert backend._warmup is not None
        assert backend._warmup.completions >= backend.pool.stats.started
        agent = await backend.start(spec("pool-c", project, {"bash": "deny", "webfetch": "deny"}))
        try:
            sessions = await agent.client.list_sessions()
            assert [s["id"] for s in sessions] == [agent.opencode_session_id]
            assert not any(s["title"] == WARMUP_TITLE for s in sessions)
            session = sessions[0]
            assert session["directory"] == str(project)
            assert {"permission": "bash", "pattern": "*", "action": "deny"} in session["permission"]
            mcp = await agent.client.mcp_status()
            assert mcp == {}  # no MCP url in this spec: nothing connected
        finally:
            await agent.close()

    async def test_a_server_dying_in_the_pool_is_replaced(self, pooled: tuple[OpenCodeBackend, Path]) -> None:
        backend, _ = pooled
        assert await backend.pool.wait_ready(timeout=120)
        victim = backend.pool.services()[0]
        replaced = backend.pool.stats.replaced
        os.kill(victim.info.pid, signal.SIGKILL)
        await wait_until(lambda: backend.pool.stats.replaced > replaced, 20, "the dead server to be dropped")
        assert await backend.pool.wait_ready(timeout=120)
        assert victim not in backend.pool.services()
        assert all(s.is_alive() for s in backend.pool.services())

    async def test_an_empty_pool_falls_back_to_a_cold_start(
        self, pooled: tuple[OpenCodeBackend, Path]
    ) -> None:
        backend, project = pooled
        assert await backend.pool.wait_ready(timeout=120)
        misses = backend.pool.stats.misses
        agents = [await backend.start(spec(f"pool-d{i}", project)) for i in range(3)]
        try:
            assert [backend.origins[f"pool-d{i}"] for i in range(3)] == ["pool", "pool", "cold"]
            assert backend.pool.stats.misses == misses + 1
            assert len({a.pid for a in agents}) == 3
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    async def test_close_leaves_no_process_and_no_state(
        self, tmp_path: Path, module_model: ScriptedModel, process_table: object
    ) -> None:
        backend = OpenCodeBackend(
            tmp_path / "agents", model_base_url=module_model.base_url, stop_grace=1.0, pool_size=1
        )
        backend.start_pool()
        assert await backend.pool.wait_ready(timeout=120)
        pids = opencode_processes(tmp_path / "agents")
        assert len(pids) >= 2  # watchdog and opencode
        await backend.close()
        assert opencode_processes(tmp_path / "agents") == []
        assert not any((tmp_path / "agents" / "_pool").iterdir())


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["warmed", "elsewhere"])
async def test_a_pooled_agent_works_in_its_project_with_its_token(
    tmp_path: Path, scripted_model: ScriptedModel, marker: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Through the engine: a pooled agent's relative `write` lands in its project (not the pooled
    server's own folder), it reaches our MCP server with its own token (its nested spawn_agent call
    is recorded with the agent's session as caller and parent), and its server is gone afterwards.

    The pooled server connected to our MCP server during its warm-up, in the directory it warmed up
    in, with a token that belonged to nobody, and opened its event stream there: taken for that
    directory, the token is bound to the agent's session (once) and the stream is the agent's;
    taken for another one ("elsewhere"), both are dropped, and the agent gets a new token, an MCP
    connection and an event stream in its own directory."""
    project = tmp_path / "project"
    directory = project if where == "warmed" else project / "elsewhere"
    directory.mkdir(parents=True)
    root = root_request(directory, "backend_specialist", f"{marker} write notes and delegate the tests")
    child = child_request(root, "tester", "test the notes")
    scripted_model.add(
        [
            ToolCallStep.of("write", {"filePath": f"notes/{marker}.txt", "content": "pooled\n"}),
            ToolCallStep.of("ledger_spawn_agent", child),
            EchoToolResultStep(prefix="spawned: "),
        ],
        match=marker,
    )
    async with running_engine(tmp_path, scripted_model, pool_size=1) as engine:
        backend = engine.service.backend  # type: ignore[union-attr]
        assert await backend.pool.wait_ready(timeout=120)
        [(server, ready)] = backend._prepared.items()  # connected while warming up, in the allowed root
        assert ready.directory == str(project)
        minted = ready.token
        assert minted is not None
        assert engine.tokens.lookup(minted) == (True, None)
        binds: list[tuple[str, str]] = []
        bind = engine.tokens.bind

        def spy(token: str, owner: str) -> None:
            binds.append((token, owner))
            bind(token, owner)

        monkeypatch.setattr(engine.tokens, "bind", spy)
        async with Client(engine.mcp) as c:
            sid = (await c.call_tool("spawn_agent", root)).data["session_id"]
            await c.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 90})
        led = engine.ledger
        assert led is not None
        await wait_until(lambda: not live_sessions(led), 90, "every session to end")
        assert backend.origins[sid] == "pool"
        st = led.session(sid)
        assert st is not None
        assert st.status == "completed", st
        assert (directory / "notes" / f"{marker}.txt").read_text() == "pooled\n"
        assert not list((tmp_path / "agents" / "_pool").glob(f"*/work/notes/{marker}.txt"))
        child_sid = await wait_spawned(led, "tester", 5, parent=sid)
        assert first(led, child_sid, "delegation.requested")["caller"] == sid
        assert led.session(child_sid).status == "completed"  # type: ignore[union-attr]
        pid = first(led, sid, "agent.spawned")["pid"]
        await wait_until(lambda: not process_alive(pid), 10, "the agent's server to stop")
        assert [o for t, o in binds if t == minted] == ([sid] if where == "warmed" else [])
        # the warm-up's client and open event stream became the agent's (or were dropped)
        spawned = first(led, sid, "agent.spawned")["opencode_session_id"]
        assert (ready.agent.opencode_session_id == spawned) == (where == "warmed")
        assert engine.tokens.lookup(minted) == (False, None)  # revoked with its session, or dropped
        # the pooled server's folder is gone; its log is in the agent's folder, without credentials
        await wait_until(lambda: not server.state_dir.exists(), 10, "the pooled server's folder to go")
        assert sorted(p.name for p in (tmp_path / "agents" / sid).iterdir()) == ["opencode.log"]


@pytest.mark.asyncio
async def test_sigkill_of_the_engine_leaves_no_pooled_server(
    tmp_path: Path, scripted_model: ScriptedModel
) -> None:
    """`ledger serve --pool-size 2` killed with SIGKILL: the watchdogs end the pooled servers too."""
    work = tmp_path / "agents"
    async with ledger_serve(tmp_path, scripted_model, "--pool-size", "2") as (proc, _url, _token):
        await wait_until(
            lambda: len([p for p in opencode_processes(work / "_pool")]) >= 4, 120, "two pooled servers"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    await wait_no_opencode(work, timeout=20)
