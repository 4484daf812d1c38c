"""Limits while agents run: timeout, token budgets rolled up to ancestors, depth, slots and queueing.

Every test starts its own engine (the limits are engine settings) on a real ledger, with real
`opencode serve` agents; only the model is scripted. Nothing may hang: each scenario runs under
an ``asyncio.timeout`` well below pytest's own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    child_request,
    events,
    first,
    live_sessions,
    opencode_processes,
    quiet_logfire,  # noqa: F401 - a fixture
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

from engine.runtime import Engine
from engine.scripted_model import EchoToolResultStep, HangStep, ScriptedModel, TextStep, ToolCallStep, Usage

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("quiet_logfire")]

SMALL = Usage(prompt_tokens=100, completion_tokens=10)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def spawn(engine: Engine, request: dict[str, Any]) -> str:
    async with Client(engine.mcp) as c:
        return str((await c.call_tool("spawn_agent", request)).data["session_id"])


async def settle(engine: Engine, timeout: float = 120) -> None:
    led = engine.ledger
    assert led is not None
    await wait_until(
        lambda: not live_sessions(led), timeout, f"every session to end (live: {live_sessions(led)})"
    )


def seq_of(engine: Engine, stream: str, type_: str) -> int:
    assert engine.ledger is not None
    return next(e.seq for e in engine.ledger.entries(stream=stream, types=[type_]))


class TestTimeout:
    async def test_timeout_fails_the_agent_and_ends_its_server(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """A model that never answers: kind=timeout after timeout_seconds, and its server is gone."""
        async with asyncio.timeout(90), running_engine(tmp_path, scripted_model) as engine:
            scripted_model.add([HangStep(keepalive=0.2)], match=marker)
            req = root_request(tmp_path / "project", "reviewer", f"{marker} review forever")
            req["timeout_seconds"] = 3
            sid = await spawn(engine, req)
            led = engine.ledger
            assert led is not None
            t0 = time.monotonic()
            await wait_status(led, sid, {"failed"}, 60)
            failed = first(led, sid, "agent.failed")
            assert failed["kind"] == "timeout"
            assert "3 s timeout" in failed["error"]
            pid = first(led, sid, "agent.spawned")["pid"]
            assert time.monotonic() - t0 < 30
            await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the timed-out server to exit")
            assert opencode_processes(tmp_path / "agents" / sid) == []

            # the model's never-ending reply (if OpenCode got to ask for it within 3 s) was cut off too
            def abandoned() -> bool:
                return all(
                    r.outcome != "pending" for r in scripted_model.completions if r.conversation == marker
                )

            await wait_until(abandoned, 15, "the hanging reply to end")


class TestBudgets:
    async def test_token_budget_exceeded_fails_the_agent(
        self, tmp_path: Path, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """A reply whose usage passes budget.max_tokens records budget.exceeded, then fails the agent."""
        async with asyncio.timeout(90), running_engine(tmp_path, scripted_model) as engine:
            scripted_model.add(
                [
                    TextStep(
                        text="a very long answer", usage=Usage(prompt_tokens=5000, completion_tokens=50)
                    ),
                    TextStep(text="never reached"),
                ],
                match=marker,
            )
            req = root_request(
                tmp_path / "project", "researcher", f"{marker} research", budget={"max_tokens": 1000}
            )
            sid = await spawn(engine, req)
            led = engine.ledger
            assert led is not None
            await wait_status(led, sid, {"failed"}, 60)
            exceeded = first(led, sid, "budget.exceeded")
            assert exceeded["limit"] == "tokens"
            assert exceeded["allowed"] == 1000
            assert exceeded["used"] >= 5050
            assert exceeded["charged_to"] == sid
            failed = first(led, sid, "agent.failed")
            assert failed["kind"] == "budget"
            kinds = types_of(led, sid)
            assert (
                kinds.index("output.received") < kinds.index("budget.exceeded") < kinds.index("agent.failed")
            )
            assert led.session(sid).max_tokens == 1000  # type: ignore[union-attr]
            assert led.verify().ok

    async def test_child_spending_is_charged_to_the_parent_and_limits_later_children(
        self, tmp_path: Path, scripted_model: ScriptedModel
    ) -> None:
        """A child's tokens count in its parent's subtree; a later child asking for more than the parent has
        left is refused with BUD-01 (the agent sees the refusal and carries on)."""
        p, c1 = uid("BUDP"), uid("BUDC1")
        project = tmp_path / "project"
        parent = root_request(project, "backend_specialist", f"{p} implement", budget={"max_tokens": 30000})
        first_child = child_request(parent, "tester", f"{c1} test it", budget={"max_tokens": 12000})
        greedy = child_request(parent, "reviewer", "review it all", budget={"max_tokens": 25000})
        scripted_model.add(
            [
                ToolCallStep.of("ledger_delegate", first_child, usage=SMALL),
                ToolCallStep.of("ledger_spawn_agent", greedy, usage=SMALL),
                EchoToolResultStep(prefix="second: ", usage=SMALL),
            ],
            match=p,
        )
        scripted_model.add(
            [TextStep(text="tests done", usage=Usage(prompt_tokens=9000, completion_tokens=100))], match=c1
        )
        async with asyncio.timeout(150), running_engine(tmp_path, scripted_model) as engine:
            sid = await spawn(engine, parent)
            await settle(engine)
            led = engine.ledger
            assert led is not None
            root = led.session(sid)
            assert root is not None
            assert root.status == "completed"
            [child_sid] = root.children
            child = led.session(child_sid)
            assert child is not None
            assert child.status == "completed"
            assert child.tokens_used >= 9100
            assert root.subtree_tokens == root.tokens_used + child.tokens_used
            assert root.subtree_cost_usd == pytest.approx(root.cost_usd + child.cost_usd)
            refused = [
                e.stream
                for e in led.entries(types=["delegation.requested"])
                if (e.data() or {}).get("caller") == sid and e.stream != child_sid
            ]
            assert len(refused) == 1
            decided = verdict(led, refused[0])
            assert decided["decision"] == "rejected"
            assert rules(decided["violations"]) == {"BUD-01"}
            bud = decided["violations"][0]
            assert bud["path"] == "delegation_context.budget.max_tokens"
            assert bud["actual"] == 25000
            left = int(bud["expected"].removeprefix("<= "))  # what the parent had left when it asked
            assert 30000 - child.tokens_used - root.tokens_used <= left <= 30000 - child.tokens_used
            calls = [(d["tool"], d["status"]) for _, d in events(led, sid, ["tool.called"])]
            assert calls == [("ledger_delegate", "completed"), ("ledger_spawn_agent", "error")]
            assert "BUD-01" in (root.last_output or "")

    async def test_a_childs_overspend_exhausts_the_parents_budget(
        self, tmp_path: Path, scripted_model: ScriptedModel
    ) -> None:
        """A child without a budget of its own is stopped when its spending exhausts its parent's budget."""
        p, c = uid("ROLLP"), uid("ROLLC")
        project = tmp_path / "project"
        parent = root_request(project, "backend_specialist", f"{p} implement", budget={"max_tokens": 8000})
        child = child_request(parent, "tester", f"{c} test it")
        scripted_model.add(
            [
                ToolCallStep.of("ledger_delegate", child, usage=SMALL),
                TextStep(text="parent done", usage=SMALL),
            ],
            match=p,
        )
        scripted_model.add(
            [
                TextStep(text="expensive", usage=Usage(prompt_tokens=9000, completion_tokens=10)),
                TextStep(text="never"),
            ],
            match=c,
        )
        async with asyncio.timeout(150), running_engine(tmp_path, scripted_model) as engine:
            sid = await spawn(engine, parent)
            await settle(engine)
            led = engine.ledger
            assert led is not None
            child_sid = await wait_spawned(led, "tester", 5, parent=sid)
            exceeded = first(led, child_sid, "budget.exceeded")
            assert exceeded["charged_to"] == sid
            assert exceeded["allowed"] == 8000
            assert first(led, child_sid, "agent.failed")["kind"] == "budget"
            root = led.session(sid)
            assert root is not None
            assert root.subtree_tokens > 8000
            # the parent's own next reply finds its budget spent too, and it is stopped as well
            assert root.status == "failed"
            assert first(led, sid, "budget.exceeded")["charged_to"] == sid
            assert first(led, sid, "agent.failed")["kind"] == "budget"


class TestDepthAndNestedWaiting:
    async def test_deep_chain_of_delegates_never_deadlocks_and_depth_is_capped(
        self, tmp_path: Path, scripted_model: ScriptedModel
    ) -> None:
        """With 2 slots, five agents each waiting (ledger_delegate) on the next all complete: a waiting parent
        lends its slot. The fifth, one hop past max_depth=4, is refused with DEP-01."""
        constitution = tmp_path / "constitution.toml"
        project = tmp_path / "project"
        project.mkdir(parents=True)
        constitution.write_text(f"max_depth = 4\nallowed_roots = [{json.dumps(str(project))}]\n")
        roles_dir = project / ".delegation-ledger" / "roles"
        roles_dir.mkdir(parents=True)
        (roles_dir / "security_auditor.md").write_text(
            "---\nname: security_auditor\ndescription: Audits.\n---\nAudit.\n"
        )
        chain_roles = ["backend_specialist", "frontend_specialist", "researcher", "reviewer", "tester"]
        markers = [uid(f"DEEP{i}") for i in range(len(chain_roles))]
        requests = [root_request(project, chain_roles[0], f"{markers[0]} level 0")]
        for i in range(1, len(chain_roles)):
            requests.append(child_request(requests[-1], chain_roles[i], f"{markers[i]} level {i}"))
        too_deep = child_request(requests[-1], "security_auditor", "one level too many")
        for i in range(len(chain_roles) - 1):
            scripted_model.add(
                [
                    ToolCallStep.of("ledger_delegate", requests[i + 1]),
                    EchoToolResultStep(prefix=f"level {i} got: "),
                ],
                match=markers[i],
            )
        scripted_model.add(
            [ToolCallStep.of("ledger_spawn_agent", too_deep), TextStep(text="LEAF-DONE")], match=markers[-1]
        )
        async with (
            asyncio.timeout(240),
            running_engine(
                tmp_path, scripted_model, max_concurrent=2, constitution_path=constitution
            ) as engine,
        ):
            t0 = time.monotonic()
            async with Client(engine.mcp) as c:
                done = (await c.call_tool("delegate", {**requests[0], "wait_seconds": 200})).data
            elapsed = time.monotonic() - t0
            led = engine.ledger
            assert led is not None
            assert done["done"] is True, done
            assert done["status"] == "completed", done
            assert "LEAF-DONE" in (done["output"] or "")
            await settle(engine, 30)
            sid, depth = done["session_id"], 0
            chain = []
            while True:
                st = led.session(sid)
                assert st is not None
                assert st.status == "completed", (st.role, st.status, st.end_reason)
                assert st.depth == depth
                assert st.role == chain_roles[depth]
                chain.append(sid)
                if not st.children:
                    break
                [sid] = st.children
                depth += 1
            assert len(chain) == 5
            calls = [(d["tool"], d["status"]) for _, d in events(led, chain[-1], ["tool.called"])]
            assert calls == [("ledger_spawn_agent", "error")]
            refused = [
                e.stream
                for e in led.entries(types=["delegation.requested"])
                if (e.data() or {}).get("caller") == chain[-1]
            ]
            decided = first(led, refused[0], "gate.decided")
            assert decided["depth"] == 5
            assert rules(decided["verdict"]["violations"]) == {"DEP-01"}
            stats = engine.service.manager.statistics()  # type: ignore[union-attr]
            assert stats["completed"] == 5
            assert stats["failed"] == 0
            assert stats["holding_slots"] == 0
            assert "agent.failed" not in {e.type for e in led.entries()}
            assert elapsed < 200


class TestQueueing:
    async def test_fifo_with_one_slot(self, tmp_path: Path, scripted_model: ScriptedModel) -> None:
        """With max_concurrent=1 the second delegation waits (queued) and starts after the first ended."""
        a, b = uid("FIFOA"), uid("FIFOB")
        scripted_model.add([TextStep(text="A done", delay=4.0)], match=a)  # B stays queued meanwhile
        scripted_model.add([TextStep(text="B done")], match=b)
        project = tmp_path / "project"
        async with asyncio.timeout(120), running_engine(tmp_path, scripted_model, max_concurrent=1) as engine:
            sa = await spawn(engine, root_request(project, "reviewer", f"{a} first"))
            sb = await spawn(engine, root_request(project, "researcher", f"{b} second"))
            led = engine.ledger
            assert led is not None
            await wait_status(led, sa, {"running"}, 30)
            assert led.session(sb).status == "queued"  # type: ignore[union-attr]
            async with Client(engine.mcp) as c:
                active = (await c.call_tool("list_active_sessions", {})).data
                assert active["stats"]["queued"] == 1
                assert active["stats"]["holding_slots"] == 1
                with pytest.raises(ToolError, match="has not started yet"):  # nothing sent, nothing recorded
                    await c.call_tool("send_to_agent", {"session_id": sb, "message": "hurry"})
            assert "message.sent" not in types_of(led, sb)
            await settle(engine, 90)
            assert led.session(sa).status == "completed"
            assert led.session(sb).status == "completed"
            assert seq_of(engine, sa, "agent.completed") < seq_of(engine, sb, "agent.spawned")

    async def test_revoking_a_parent_cancels_its_queued_child(
        self, tmp_path: Path, scripted_model: ScriptedModel
    ) -> None:
        """A child still waiting for a slot belongs to the revoked subtree: it never starts."""
        p, c = uid("QREVP"), uid("QREVC")
        project = tmp_path / "project"
        parent = root_request(project, "backend_specialist", f"{p} implement and delegate")
        child = child_request(parent, "tester", f"{c} test it")
        scripted_model.add([ToolCallStep.of("ledger_spawn_agent", child), HangStep(keepalive=0.2)], match=p)
        scripted_model.add([TextStep(text="child ran")], match=c)
        async with asyncio.timeout(120), running_engine(tmp_path, scripted_model, max_concurrent=1) as engine:
            sid = await spawn(engine, parent)
            led = engine.ledger
            assert led is not None
            await asyncio.to_thread(scripted_model.wait_for_completions, 2, conversation=p, timeout=60)
            queued = [s for s in led.sessions() if s.parent_session_id == sid]
            assert len(queued) == 1
            assert queued[0].status == "queued"
            async with Client(engine.mcp) as cl:
                revoked = (
                    await cl.call_tool("revoke_delegation", {"session_id": sid, "reason": "cancelled"})
                ).data
            assert revoked["revoked"] == [sid, queued[0].session_id]
            await settle(engine, 30)
            await asyncio.sleep(2)  # would the freed slot start the child?
            child_state = led.session(queued[0].session_id)
            assert child_state is not None
            assert child_state.status == "revoked"
            assert "agent.spawned" not in types_of(led, queued[0].session_id)
            assert not [r for r in scripted_model.completions if r.conversation == c]
