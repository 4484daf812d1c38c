"""The MCP tools end to end: FastMCP's in-memory client -> our server -> the gate -> real OpenCode.

One engine (and one scripted model) serves the whole module; tests keep apart by their markers.
The ct_dev fixture request is sent exactly as given (only its project_directory made real).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from engine_support import (
    child_request,
    events,
    first,
    fixture_request,
    module_env,
    recorded_session,
    root_request,
    rules,
    running_engine,
    types_of,
    verdict,
    wait_spawned,
    wait_status,
    wait_until,
)
from fastmcp import Client
from fastmcp.exceptions import ToolError

from engine.refusals import DelegationRefused
from engine.runtime import Engine
from engine.scripted_model import HangStep, ScriptedModel, TextStep, ToolCallStep, Usage
from ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

FIXTURE_REPLY = "Plan: /oauth/token and /oauth/introspect with JWT validation; tests in tests/test_oauth.py."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(
    tmp_path_factory: pytest.TempPathFactory, module_model: ScriptedModel
) -> AsyncIterator[Engine]:
    base = tmp_path_factory.mktemp("engine-mcp")
    with module_env(base / "keys"):
        async with running_engine(base, module_model) as eng:
            yield eng


@pytest.fixture(scope="module")
def project(engine: Engine) -> Path:
    return Path(engine.settings.allowed_roots[0])


@pytest_asyncio.fixture(loop_scope="module")
async def client(engine: Engine) -> AsyncIterator[Client[Any]]:
    async with Client(engine.mcp) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def finished(engine: Engine, project: Path, module_model: ScriptedModel) -> dict[str, Any]:
    """The fixture request as given, spawned and waited for (its reply comes from the default queue)."""
    module_model.add([TextStep(text=FIXTURE_REPLY, usage=Usage(prompt_tokens=1500, completion_tokens=400))])
    request = fixture_request(project)
    async with Client(engine.mcp) as c:
        spawned = (await c.call_tool("spawn_agent", request)).data
        waited = (
            await c.call_tool("wait_for_agent", {"session_id": spawned["session_id"], "timeout_seconds": 120})
        ).data
    return {"request": request, "spawned": spawned, "waited": waited, "sid": spawned["session_id"]}


async def call_error(client: Client[Any], tool: str, args: dict[str, Any]) -> str:
    """The text of the ToolError a call must raise."""
    with pytest.raises(ToolError) as info:
        await client.call_tool(tool, args)
    return str(info.value)


class TestFixtureRequest:
    async def test_approved_with_the_att02_warning(self, finished: dict[str, Any]) -> None:
        """The ct_dev payload passes the default profile, warned only that its capability is free text."""
        spawned = finished["spawned"]
        assert spawned["decision"] == "approved"
        assert spawned["status"] == "queued"
        assert [w["rule"] for w in spawned["warnings"]] == ["ATT-02"]

    async def test_completes_with_the_agents_reply(self, finished: dict[str, Any]) -> None:
        """wait_for_agent returns once the real OpenCode agent finished, with its reply."""
        waited = finished["waited"]
        assert waited["done"] is True
        assert waited["status"] == "completed"
        assert waited["output"] == FIXTURE_REPLY
        assert waited["tokens_used"] > 0
        assert waited["cost_usd"] > 0

    async def test_ledger_records_the_whole_lifecycle(self, engine: Engine, finished: dict[str, Any]) -> None:
        """requested -> decided -> spawned -> output -> completed, on the session's stream; it verifies."""
        sid = finished["sid"]
        led = engine.ledger
        assert led is not None
        kinds = types_of(led, sid)
        assert kinds[:3] == ["delegation.requested", "gate.decided", "agent.spawned"]
        assert kinds[-1] == "agent.completed"
        assert "output.received" in kinds
        requested = first(led, sid, "delegation.requested")
        assert requested["request"] == finished["request"]
        assert requested["caller"] is None  # the main agent (no token)
        decided = verdict(led, sid)
        assert decided["decision"] == "approved"
        assert rules(decided["warnings"]) == {"ATT-02"}
        spawned = first(led, sid, "agent.spawned")
        assert spawned["opencode_session_id"].startswith("ses_")
        assert spawned["pid"] > 0
        assert spawned["depth"] == 0
        assert spawned["root_session_id"] == sid
        outputs = [d for t, d in events(led, sid, ["output.received"])]
        assert outputs[-1]["text"] == FIXTURE_REPLY
        assert outputs[-1]["tokens"]["input"] >= 1500
        assert outputs[-1]["tokens"]["output"] >= 400
        assert outputs[-1]["cost_usd"] > 0
        assert first(led, sid, "agent.completed")["summary"] == FIXTURE_REPLY
        report = led.verify()
        assert report.ok, report

    async def test_the_agents_server_is_gone_after_completion(
        self, finished: dict[str, Any], engine: Engine
    ) -> None:
        """A finished agent's `opencode serve` is stopped (one server per agent, none left over)."""
        led = engine.ledger
        assert led is not None
        pid = first(led, finished["sid"], "agent.spawned")["pid"]
        await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, f"opencode pid {pid} to exit")

    async def test_query_session(self, client: Client[Any], finished: dict[str, Any]) -> None:
        """query_session answers the projected state: status, role, depth, usage, last output."""
        st = (await client.call_tool("query_session", {"session_id": finished["sid"]})).data
        assert st["status"] == "completed"
        assert st["role"] == "backend_specialist"
        assert st["principal"] == "backend_specialist"
        assert st["delegator"] == "Project Manager"
        assert st["task_id"] == finished["request"]["task_id"]
        assert st["depth"] == 0
        assert st["parent_session_id"] is None
        assert st["tokens_used"] == finished["waited"]["tokens_used"]
        assert st["last_output"] == FIXTURE_REPLY

    async def test_get_agent_output(self, client: Client[Any], finished: dict[str, Any]) -> None:
        """get_agent_output lists every reply, the last one being the agent's answer."""
        out = (await client.call_tool("get_agent_output", {"session_id": finished["sid"]})).data
        assert out["status"] == "completed"
        assert out["outputs"][-1] == FIXTURE_REPLY
        assert out["last_output"] == FIXTURE_REPLY
        assert out["tokens_used"] > 0
        assert out["cost_usd"] > 0

    async def test_wait_for_agent_on_a_finished_session_returns_at_once(
        self, client: Client[Any], finished: dict[str, Any]
    ) -> None:
        """Waiting again for a finished session answers immediately with the same result."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        again = (
            await client.call_tool("wait_for_agent", {"session_id": finished["sid"], "timeout_seconds": 30})
        ).data
        assert loop.time() - t0 < 5
        assert again["done"] is True
        assert again["output"] == FIXTURE_REPLY

    async def test_get_delegation_chain(self, client: Client[Any], finished: dict[str, Any]) -> None:
        """A root delegation's chain is itself: path [root], tree rooted at it with no children."""
        chain = (await client.call_tool("get_delegation_chain", {"session_id": finished["sid"]})).data
        assert chain["path"] == [finished["sid"]]
        assert chain["tree"]["session_id"] == finished["sid"]
        assert chain["tree"]["children"] == []

    async def test_verify_ledger(self, client: Client[Any], finished: dict[str, Any], engine: Engine) -> None:
        """verify_ledger checks every entry of the live ledger."""
        report = (await client.call_tool("verify_ledger", {})).data
        assert report["ok"] is True
        assert engine.ledger is not None
        assert report["entries"] >= len(types_of(engine.ledger, finished["sid"]))

    async def test_send_to_a_finished_session_is_refused(
        self, client: Client[Any], finished: dict[str, Any], engine: Engine
    ) -> None:
        """A message for an agent that already finished is refused and nothing is recorded."""
        text = await call_error(
            client, "send_to_agent", {"session_id": finished["sid"], "message": "one more thing"}
        )
        assert "completed" in text
        assert engine.ledger is not None
        assert "message.sent" not in types_of(engine.ledger, finished["sid"])

    async def test_unknown_session_is_a_tool_error(self, client: Client[Any]) -> None:
        """Asking about a session the ledger never saw names it in the error."""
        ghost = str(uuid.uuid4())
        assert ghost in await call_error(client, "query_session", {"session_id": ghost})


async def hanging_reviewer(
    client: Client[Any], engine: Engine, project: Path, model: ScriptedModel, marker: str
) -> tuple[Ledger, str]:
    """A reviewer whose model never answers, running: (the ledger, its session id)."""
    model.add([HangStep(keepalive=0.2)], match=marker)
    request = root_request(project, "reviewer", f"{marker} review")
    sid = (await client.call_tool("spawn_agent", request)).data["session_id"]
    led = engine.ledger
    assert led is not None
    await wait_status(led, sid, {"running"})
    await asyncio.to_thread(model.wait_for_completions, 1, conversation=marker, timeout=60)
    return led, sid


class TestRunningAgent:
    async def test_active_send_and_stop(
        self, client: Client[Any], engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """A running agent is listed as active, takes a follow-up message, and stop_agent ends it."""
        led, sid = await hanging_reviewer(client, engine, project, module_model, marker)
        active = (await client.call_tool("list_active_sessions", {})).data
        mine = [s for s in active["sessions"] if s["session_id"] == sid]
        assert mine
        assert mine[0]["status"] == "running"
        assert mine[0]["role"] == "reviewer"
        assert active["stats"]["running"] >= 1
        sent = (
            await client.call_tool(
                "send_to_agent", {"session_id": sid, "message": f"{marker} also check PKCE"}
            )
        ).data
        assert sent == {"session_id": sid, "sent": True}
        assert first(led, sid, "message.sent")["text"] == f"{marker} also check PKCE"
        pid = first(led, sid, "agent.spawned")["pid"]
        stopped = (await client.call_tool("stop_agent", {"session_id": sid, "reason": "enough"})).data
        assert stopped["status"] == "stopped"
        assert first(led, sid, "agent.stopped")["reason"] == "enough"
        active = (await client.call_tool("list_active_sessions", {})).data
        assert sid not in {s["session_id"] for s in active["sessions"]}
        await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the stopped agent's server to exit")
        folder = engine.settings.work_dir / sid  # type: ignore[operator]
        await wait_until(
            lambda: sorted(p.name for p in folder.iterdir()) == ["opencode.log"], 10, "its state to go"
        )  # its OpenCode state and credentials are gone; its log stays

    async def test_stops_at_once_end_the_agent_once(
        self, client: Client[Any], engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """Three stop_agent calls at once (a delegator, a revocation, a shutdown may race): the first
        one's reason is recorded once and its clean-up, server stop included, is not cut short."""
        led, sid = await hanging_reviewer(client, engine, project, module_model, marker)
        pid = first(led, sid, "agent.spawned")["pid"]
        answers = await asyncio.gather(
            *(client.call_tool("stop_agent", {"session_id": sid, "reason": f"stop {i}"}) for i in range(3))
        )
        assert {a.data["status"] for a in answers} == {"stopped"}
        assert types_of(led, sid).count("agent.stopped") == 1
        assert first(led, sid, "agent.stopped")["reason"] in {"stop 0", "stop 1", "stop 2"}
        await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the stopped agent's server to exit")

    async def test_a_message_that_cannot_be_delivered_is_never_left_unexplained(
        self, client: Client[Any], engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """The agent's server dies (kill -9) and a message is sent at once: it is refused before anything
        is recorded (the engine already saw the death), or its message.sent is followed by an incident
        note saying it did not reach the agent; the client gets an error either way."""
        led, sid = await hanging_reviewer(client, engine, project, module_model, marker)
        os.kill(first(led, sid, "agent.spawned")["pid"], signal.SIGKILL)
        with pytest.raises(ToolError, match=r"did not reach its agent|no running agent|is failed"):
            await client.call_tool("send_to_agent", {"session_id": sid, "message": "still there?"})
        sent = [e.seq for e in led.entries(stream=sid, types=["message.sent"])]
        notes = [d["text"] for _, d in events(led, sid, ["operator.note"])]
        assert len(notes) == len(sent)
        for seq, note in zip(sent, notes, strict=True):
            assert f"recorded at seq {seq} did not reach the agent" in note
        await wait_status(led, sid, {"failed", "stopped", "completed"}, 30)


class TestRefusals:
    async def test_gate_refusal_names_each_rule(
        self, client: Client[Any], engine: Engine, project: Path
    ) -> None:
        """A refused spawn is a ToolError naming every violated rule; both facts are on the ledger."""
        bad = fixture_request(project, "Deploy to production.")
        bad["original_task"]["requester"] = "Mallory"
        bad["delegation_context"]["delegated_to"] = "frontend_specialist"
        text = await call_error(client, "spawn_agent", bad)
        assert "ID-01" in text
        assert "ID-03" in text
        sid = recorded_session(text)
        led = engine.ledger
        assert led is not None
        assert types_of(led, sid) == ["delegation.requested", "gate.decided"]
        decided = verdict(led, sid)
        assert decided["decision"] == "rejected"
        assert rules(decided["violations"]) == {"ID-01", "ID-03"}
        assert led.session(sid) is None

    @pytest.mark.parametrize("top_level_extra", [True, False], ids=["unknown-argument", "tool-schema-ok"])
    async def test_malformed_request_is_recorded_and_refused(
        self, client: Client[Any], engine: Engine, project: Path, top_level_extra: bool
    ) -> None:
        """A malformed spawn (missing field, typo'd key, naive timestamp, unknown argument) is still
        judged and recorded; the error names the same rules and fields as the ledger, no session is left."""
        req = fixture_request(project)
        dc = req["delegation_context"]
        del dc["phantom_level"]
        dc["delegated_too"] = "backend_specialist"
        dc["delegated_at"] = "2025-10-01T08:05:00"  # no timezone
        expected = {
            ("SCH-01", "delegation_context.phantom_level"),
            ("SCH-01", "delegation_context.delegated_too"),
            ("SCH-02", "delegation_context.delegated_at"),
        }
        if top_level_extra:
            req["priority"] = "high"  # not an argument of spawn_agent: FastMCP's own validation fails
            expected.add(("SCH-01", "priority"))
        text = await call_error(client, "spawn_agent", req)
        sid = recorded_session(text)
        led = engine.ledger
        assert led is not None
        assert types_of(led, sid) == ["delegation.requested", "gate.decided"]
        assert first(led, sid, "delegation.requested")["request"] == req
        decided = verdict(led, sid)
        assert decided["decision"] == "rejected"
        assert {(f["rule"], f["path"]) for f in decided["violations"]} == expected
        for rule, path in expected:
            assert f"{rule} at {path} " in text
        assert "did you mean 'delegated_to'" in text
        assert led.session(sid) is None

    async def test_missing_argument_is_recorded_and_refused(
        self, client: Client[Any], engine: Engine, project: Path
    ) -> None:
        """A spawn without a required argument fails FastMCP's schema, and is still judged (SCH-01)."""
        req = fixture_request(project)
        del req["instructions"]
        text = await call_error(client, "spawn_agent", req)
        assert "SCH-01 at instructions " in text
        sid = recorded_session(text)
        assert engine.ledger is not None
        assert [(f["rule"], f["path"]) for f in verdict(engine.ledger, sid)["violations"]] == [
            ("SCH-01", "instructions")
        ]
        assert engine.ledger.session(sid) is None

    async def test_unknown_role_lists_the_known_roles(
        self, client: Client[Any], engine: Engine, project: Path
    ) -> None:
        """A role outside the catalogue is refused with ROLE-01, naming the roles that exist."""
        req = root_request(project, "wizard", "cast a spell")
        text = await call_error(client, "spawn_agent", req)
        assert "ROLE-01" in text
        for known in ("backend_specialist", "tester", "reviewer"):
            assert known in text
        assert engine.ledger is not None
        assert rules(verdict(engine.ledger, recorded_session(text))["violations"]) == {"ROLE-01"}


class TestCatalogue:
    async def test_roles_merge_catalogue_project_and_opencode(
        self, client: Client[Any], project: Path
    ) -> None:
        """Built-in roles, the project's own roles and OpenCode's agents (GET /agent) in one list."""
        roles_dir = project / ".delegation-ledger" / "roles"
        roles_dir.mkdir(parents=True, exist_ok=True)
        (roles_dir / "security_auditor.md").write_text(
            "---\nname: security_auditor\ndescription: Audits auth code.\n---\nYou audit security.\n"
        )
        listed = (
            await client.call_tool("list_available_agent_roles", {"project_directory": str(project)})
        ).data
        by_name = {r["name"]: r for r in listed["roles"]}
        assert listed["note"] is None
        assert by_name["backend_specialist"]["source"].endswith("backend_specialist.md")
        assert by_name["security_auditor"]["description"] == "Audits auth code."
        assert Path(by_name["security_auditor"]["source"]).parent == roles_dir
        assert by_name["build"]["source"] == "opencode"
        assert by_name["general"]["source"] == "opencode"
        assert [r["name"] for r in listed["roles"]] == sorted(by_name)
        without = (await client.call_tool("list_available_agent_roles", {})).data
        assert "security_auditor" not in {r["name"] for r in without["roles"]}

    async def test_agent_capabilities(self, client: Client[Any]) -> None:
        """A catalogue role answers from its file; an OpenCode agent with OpenCode's own description."""
        tester = (await client.call_tool("get_agent_capabilities", {"role": "tester"})).data
        assert tester["name"] == "tester"
        assert "tests" in tester["description"]
        assert tester["opencode_agent"] is None
        general = (await client.call_tool("get_agent_capabilities", {"role": "general"})).data
        assert general["source"] == "opencode"
        assert general["opencode_agent"]["name"] == "general"
        text = await call_error(client, "get_agent_capabilities", {"role": "wizard"})
        assert "unknown role 'wizard'" in text
        assert "tester" in text
        assert "build" in text

    async def test_list_opencode_models_shows_the_scripted_provider(self, client: Client[Any]) -> None:
        """Providers come from the real OpenCode server: our scripted provider, its model and price."""
        models = (await client.call_tool("list_opencode_models", {})).data
        providers = {p["id"]: p for p in models["providers"]}
        assert "scripted" in providers
        model = providers["scripted"]["models"]["scripted-1"]
        assert model["cost"]["input"] == 3.0
        assert models["default"]["scripted"] == "scripted-1"


class TestDelegate:
    async def test_delegate_spawns_and_waits(
        self, client: Client[Any], project: Path, module_model: ScriptedModel, marker: str, engine: Engine
    ) -> None:
        """delegate returns the agent's output once it finished."""
        module_model.add([TextStep(text=f"{marker}: 12 tests written, all green")], match=marker)
        req = root_request(project, "tester", f"{marker} write the OAuth2 tests")
        result = (await client.call_tool("delegate", {**req, "wait_seconds": 120})).data
        assert result["done"] is True
        assert result["status"] == "completed"
        assert result["output"] == f"{marker}: 12 tests written, all green"
        assert result["tokens_used"] > 0
        assert engine.ledger is not None
        assert types_of(engine.ledger, result["session_id"])[-1] == "agent.completed"

    async def test_delegate_refusal_is_a_tool_error(self, client: Client[Any], project: Path) -> None:
        """delegate refuses like spawn_agent does, before any waiting."""
        req = root_request(project, "tester", "write tests")
        req["task_id"] = "another-task"
        assert "ID-02" in await call_error(client, "delegate", {**req, "wait_seconds": 5})

    async def test_delegate_batch_judges_each_request_on_its_own(
        self, client: Client[Any], project: Path, module_model: ScriptedModel, engine: Engine
    ) -> None:
        """One refused request in a batch does not stop the others; each has its own verdict."""
        a, b = f"BATCH-A-{uuid.uuid4().hex[:6]}", f"BATCH-B-{uuid.uuid4().hex[:6]}"
        module_model.add([TextStep(text=f"{a} reviewed")], match=a)
        module_model.add([TextStep(text=f"{b} researched")], match=b)
        good1 = root_request(project, "reviewer", f"{a} review the change")
        bad = root_request(project, "wizard", "cast a spell")
        good2 = root_request(project, "researcher", f"{b} research JWT libraries")
        out = (
            await client.call_tool(
                "delegate_batch", {"requests": [good1, bad, good2], "wait": True, "wait_seconds": 120}
            )
        ).data["results"]
        assert [r["decision"] for r in out] == ["approved", "rejected", "approved"]
        assert "ROLE-01" in out[1]["error"]
        assert out[0]["status"] == "completed"
        assert out[0]["output"] == f"{a} reviewed"
        assert out[2]["status"] == "completed"
        assert out[2]["output"] == f"{b} researched"
        led = engine.ledger
        assert led is not None
        assert verdict(led, out[1]["session_id"])["decision"] == "rejected"
        assert led.session(out[1]["session_id"]) is None
        assert len({r["session_id"] for r in out}) == 3


class TestRevoke:
    async def test_revoke_stops_the_whole_running_subtree(
        self, client: Client[Any], engine: Engine, project: Path, module_model: ScriptedModel
    ) -> None:
        """Revoking a root stops it and its running child; both are recorded as revoked."""
        r, c = f"REVROOT-{uuid.uuid4().hex[:6]}", f"REVCHILD-{uuid.uuid4().hex[:6]}"
        root = root_request(project, "backend_specialist", f"{r} implement and delegate the tests")
        child = child_request(root, "tester", f"{c} write the tests")
        module_model.add([ToolCallStep.of("ledger_spawn_agent", child), HangStep(keepalive=0.2)], match=r)
        module_model.add([HangStep(keepalive=0.2)], match=c)
        root_sid = (await client.call_tool("spawn_agent", root)).data["session_id"]
        led = engine.ledger
        assert led is not None
        child_sid = await wait_spawned(led, "tester", 90, parent=root_sid)
        await asyncio.to_thread(module_model.wait_for_completions, 1, conversation=c, timeout=60)
        await asyncio.to_thread(module_model.wait_for_completions, 2, conversation=r, timeout=60)
        pids = [first(led, s, "agent.spawned")["pid"] for s in (root_sid, child_sid)]
        revoked = (
            await client.call_tool("revoke_delegation", {"session_id": root_sid, "reason": "scope changed"})
        ).data
        assert revoked["revoked"] == [root_sid, child_sid]
        rec = first(led, root_sid, "delegation.revoked")
        assert rec["subtree"] == [child_sid]
        assert rec["reason"] == "scope changed"
        for sid in (root_sid, child_sid):
            st = led.session(sid)
            assert st is not None
            assert st.status == "revoked"
            assert st.revoked is True
            assert "scope changed" in (st.end_reason or "")
        for pid in pids:
            await wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 15, f"pid {pid} to exit")
        # a revoked chain admits nothing new below it (as if the revoked root still tried)
        assert engine.service is not None
        with pytest.raises(DelegationRefused) as late:
            await engine.service.spawn(child_request(root, "researcher", "research more"), caller=root_sid)
        assert "REV-01" in rules([f.model_dump() for f in late.value.verdict.violations])
        assert led.verify().ok
