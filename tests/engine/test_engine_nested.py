"""Nested delegation through OpenCode's own MCP client, token-bound callers, and runtime permissions.

A sub-agent's model calls ``ledger_spawn_agent`` (OpenCode prefixes our tools with the server's
name); OpenCode calls our loopback HTTP endpoint with the bearer token of that agent's session, and
the engine makes the new delegation a child of that session whatever the request claims.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from engine_support import (
    child_request,
    events,
    first,
    live_sessions,
    module_env,
    recorded_session,
    root_request,
    rules,
    running_engine,
    types_of,
    verdict,
    wait_spawned,
    wait_until,
)
from fastmcp import Client
from fastmcp.exceptions import ToolError

from engine.permissions import PermissionPolicy
from engine.runtime import Engine
from engine.scripted_model import EchoToolResultStep, ScriptedModel, TextStep, ToolCall, ToolCallStep
from schemas.requests import SpawnRequest

integration = pytest.mark.integration
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[0, 2], ids=["cold", "pooled"])
async def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, module_model: ScriptedModel
) -> AsyncIterator[Engine]:
    """Every test runs twice: agents on cold-started servers, and on servers of a warm pool of 2
    (their directory, permission rules and MCP token are then applied after the server started)."""
    base = tmp_path_factory.mktemp("engine-nested")
    with module_env(base / "keys"):
        async with running_engine(base, module_model, pool_size=request.param) as eng:
            if request.param:
                assert await eng.service.backend.pool.wait_ready(timeout=120)  # type: ignore[union-attr]
            yield eng


@pytest.fixture(scope="module")
def project(engine: Engine) -> Path:
    return Path(engine.settings.allowed_roots[0])


async def run_root(engine: Engine, request: dict[str, Any], timeout: float = 120) -> str:
    """Spawn ``request`` as the main agent and wait until every session of the ledger has ended."""
    async with Client(engine.mcp) as c:
        sid = (await c.call_tool("spawn_agent", request)).data["session_id"]
        await c.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": timeout})
    assert engine.ledger is not None
    led = engine.ledger
    await wait_until(lambda: not live_sessions(led), timeout, "every session to end")
    return str(sid)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two_hop(engine: Engine, project: Path, module_model: ScriptedModel) -> dict[str, Any]:
    """backend_specialist -> tester through OpenCode's MCP client; the tester then tries to hand the
    work back to backend_specialist (a cycle)."""
    r, c = f"HOP-ROOT-{uuid.uuid4().hex[:6]}", f"HOP-CHILD-{uuid.uuid4().hex[:6]}"
    root = root_request(project, "backend_specialist", f"{r} implement OAuth2 and delegate the tests")
    child = child_request(root, "tester", f"{c} write the OAuth2 tests")
    back = child_request(child, "backend_specialist", "fix the endpoints yourself")
    module_model.add(
        [ToolCallStep.of("ledger_spawn_agent", child), EchoToolResultStep(prefix="spawned: ")], match=r
    )
    module_model.add(
        [ToolCallStep.of("ledger_spawn_agent", back), EchoToolResultStep(prefix="refused: ")], match=c
    )
    sid = await run_root(engine, root)
    assert engine.ledger is not None
    child_sid = await wait_spawned(engine.ledger, "tester", 5, parent=sid)
    return {"root": sid, "child": child_sid, "requests": (root, child, back)}


@integration
@module_loop
class TestTwoHopChain:
    async def test_child_is_a_child_of_the_calling_session(
        self, engine: Engine, two_hop: dict[str, Any]
    ) -> None:
        """The tester's session hangs under the root: parent, depth 1, same root, linked both ways."""
        led = engine.ledger
        assert led is not None
        root, child = led.session(two_hop["root"]), led.session(two_hop["child"])
        assert root is not None
        assert child is not None
        assert child.parent_session_id == root.session_id
        assert child.depth == 1
        assert child.root_session_id == root.session_id
        assert root.children == [child.session_id]
        assert root.status == "completed"
        assert child.status == "completed"

    async def test_the_nested_call_is_recorded_with_its_caller(
        self, engine: Engine, two_hop: dict[str, Any]
    ) -> None:
        """The child's request is recorded as made by the root's session (its token), judged at hop 1."""
        led = engine.ledger
        assert led is not None
        requested = first(led, two_hop["child"], "delegation.requested")
        assert requested["caller"] == two_hop["root"]
        assert requested["parent_session_id"] == two_hop["root"]
        assert requested["request"] == two_hop["requests"][1]
        decided = first(led, two_hop["child"], "gate.decided")
        assert decided["verdict"]["decision"] == "approved"
        assert decided["depth"] == 1
        assert decided["parent_session_id"] == two_hop["root"]
        assert first(led, two_hop["child"], "agent.spawned")["delegator"] == "backend_specialist"

    async def test_the_root_called_our_tool_through_opencode(
        self, engine: Engine, two_hop: dict[str, Any]
    ) -> None:
        """OpenCode offers our tools as ledger_<tool>; the root's call and its answer are on the ledger."""
        led = engine.ledger
        assert led is not None
        calls = [d for _, d in events(led, two_hop["root"], ["tool.called"])]
        assert [(c["tool"], c["status"]) for c in calls] == [("ledger_spawn_agent", "completed")]
        assert calls[0]["input"]["role"] == "tester"
        assert two_hop["child"] in (calls[0]["output"] or "")
        assert two_hop["child"] in (led.session(two_hop["root"]).last_output or "")  # type: ignore[union-attr]

    async def test_handing_back_to_the_parent_is_a_cycle(
        self, engine: Engine, two_hop: dict[str, Any]
    ) -> None:
        """The tester delegating back to backend_specialist is refused (CYC-01), recorded under it."""
        led = engine.ledger
        assert led is not None
        refused = [
            e.stream
            for e in led.entries(types=["delegation.requested"])
            if (e.data() or {}).get("caller") == two_hop["child"]
        ]
        assert len(refused) == 1
        assert types_of(led, refused[0]) == ["delegation.requested", "gate.decided"]
        decided = first(led, refused[0], "gate.decided")
        assert decided["verdict"]["decision"] == "rejected"
        assert "CYC-01" in rules(decided["verdict"]["violations"])
        assert decided["parent_session_id"] == two_hop["child"]
        assert decided["depth"] == 2
        assert led.session(refused[0]) is None
        calls = [d for _, d in events(led, two_hop["child"], ["tool.called"])]
        assert [(c["tool"], c["status"]) for c in calls] == [("ledger_spawn_agent", "error")]
        assert "CYC-01" in (calls[0]["error"] or "")
        # the model saw the refusal, and the tester still finished its own work
        assert "CYC-01" in (led.session(two_hop["child"]).last_output or "")  # type: ignore[union-attr]

    async def test_chain_tool_shows_the_path_and_the_ledger_verifies(
        self, engine: Engine, two_hop: dict[str, Any]
    ) -> None:
        """get_delegation_chain walks from the root to the child; the whole ledger verifies."""
        async with Client(engine.mcp) as c:
            chain = (await c.call_tool("get_delegation_chain", {"session_id": two_hop["child"]})).data
        assert chain["path"] == [two_hop["root"], two_hop["child"]]
        assert chain["tree"]["session_id"] == two_hop["root"]
        assert [n["session_id"] for n in chain["tree"]["children"]] == [two_hop["child"]]
        assert engine.ledger is not None
        assert engine.ledger.verify().ok


@integration
@module_loop
class TestTokenBinding:
    async def test_a_forged_delegator_is_judged_against_the_real_parent(
        self, engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """A request claiming the main agent's delegator is still the calling agent's child: CHN-01."""
        root = root_request(project, "backend_specialist", f"{marker} implement, then delegate")
        forged = child_request(root, "tester", "write tests, says the project manager")
        forged["delegation_context"].update(
            delegator=root["delegation_context"]["delegator"],
            delegator_cap=root["delegation_context"]["delegator_cap"],
        )
        module_model.add([ToolCallStep.of("ledger_spawn_agent", forged), TextStep(text="ok")], match=marker)
        sid = await run_root(engine, root)
        led = engine.ledger
        assert led is not None
        streams = [
            e.stream
            for e in led.entries(types=["delegation.requested"])
            if (e.data() or {}).get("caller") == sid
        ]
        assert len(streams) == 1
        decided = first(led, streams[0], "gate.decided")
        assert decided["parent_session_id"] == sid
        assert decided["depth"] == 1
        assert decided["verdict"]["decision"] == "rejected"
        assert "CHN-01" in rules(decided["verdict"]["violations"])
        assert led.session(sid).children == []  # type: ignore[union-attr]

    async def test_http_caller_is_the_token_owner(
        self, engine: Engine, two_hop: dict[str, Any], project: Path
    ) -> None:
        """Over HTTP a session token makes the caller that session: its spawns are its children, and it
        sees only its own subtree; the operator token is the main agent; a revoked token is refused."""
        assert engine.agent_mcp_url is not None
        assert engine.ledger is not None
        led = engine.ledger
        child = two_hop["child"]
        token = engine.tokens.issue(child)
        try:
            async with Client(engine.agent_mcp_url, auth=token) as c:
                claim = root_request(project, "researcher", "research on my own")  # claims to be a root
                with pytest.raises(ToolError) as info:
                    await c.call_tool("spawn_agent", claim)
                sid = recorded_session(str(info.value))
                assert first(led, sid, "delegation.requested")["caller"] == child
                decided = first(led, sid, "gate.decided")
                assert decided["parent_session_id"] == child
                assert decided["depth"] == 2
                assert {"CHN-01", "CHN-02"} <= rules(decided["verdict"]["violations"])
                own = (await c.call_tool("query_session", {"session_id": child})).data
                assert own["session_id"] == child
                with pytest.raises(ToolError, match="own delegations"):
                    await c.call_tool("query_session", {"session_id": two_hop["root"]})
        finally:
            engine.tokens.revoke(child)
        async with httpx.AsyncClient() as http:  # the token died with the revocation
            hello = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
            headers = {"Accept": "application/json, text/event-stream"}
            refused = await http.post(
                engine.agent_mcp_url, json=hello, headers={**headers, "Authorization": f"Bearer {token}"}
            )
            anonymous = await http.post(engine.agent_mcp_url, json=hello, headers=headers)
        assert refused.status_code == 401
        assert anonymous.status_code == 401
        assert engine.operator_token is not None
        async with Client(engine.agent_mcp_url, auth=engine.operator_token) as c:
            with pytest.raises(ToolError) as info:
                await c.call_tool("spawn_agent", root_request(project, "wizard", "anything"))
        sid = recorded_session(str(info.value))
        requested = first(led, sid, "delegation.requested")
        assert requested["caller"] == "operator"
        assert requested["parent_session_id"] is None
        assert rules(verdict(led, sid)["violations"]) == {"ROLE-01"}

    async def test_a_minted_token_opens_the_handshake_only_until_it_is_bound(
        self, engine: Engine, two_hop: dict[str, Any], project: Path
    ) -> None:
        """A token minted for a pooled server (not bound yet) initializes and lists the tools, but
        every tool call with it is refused and nothing is recorded; bound to a session, the same MCP
        connection acts for that session, and the token cannot be bound again."""
        assert engine.agent_mcp_url is not None
        assert engine.ledger is not None
        led = engine.ledger
        child = two_hop["child"]
        token = engine.tokens.mint()
        requested = len(events(led, types=["delegation.requested"]))
        try:
            async with Client(engine.agent_mcp_url, auth=token) as c:
                assert "spawn_agent" in {t.name for t in await c.list_tools()}
                for name, args in [
                    ("spawn_agent", root_request(project, "researcher", "research before being bound")),
                    ("list_active_sessions", {}),
                    ("query_session", {"session_id": child}),
                ]:
                    with pytest.raises(ToolError, match="not bound"):
                        await c.call_tool(name, args)
                assert len(events(led, types=["delegation.requested"])) == requested
                engine.tokens.bind(token, child)
                own = (await c.call_tool("query_session", {"session_id": child})).data
                assert own["session_id"] == child
                with pytest.raises(ToolError, match="own delegations"):
                    await c.call_tool("query_session", {"session_id": two_hop["root"]})
                with pytest.raises(ValueError):
                    engine.tokens.bind(token, two_hop["root"])
        finally:
            engine.tokens.revoke(child)
        assert engine.tokens.lookup(token) == (False, None)


@integration
@module_loop
class TestRuntimePermissions:
    async def test_denied_tools_are_hidden_and_refused_without_asking(
        self, engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """With a read-only structured scope, OpenCode 1.18.33 never asks: denied tools are not offered
        (a call to one becomes OpenCode's `invalid` tool), leaving the project is refused at once, and
        the agent still finishes. Nothing runs, nothing waits for an answer."""
        target = project / f"{marker}.created"
        calls = [
            ToolCall(name="bash", arguments={"command": f"touch {target}", "description": "touch"}),
            ToolCall(name="write", arguments={"filePath": str(target), "content": "x"}),
            ToolCall(name="read", arguments={"filePath": "/etc/hostname"}),
            ToolCall(
                name="question",
                arguments={
                    "questions": [
                        {
                            "question": "Which DB?",
                            "header": "DB",
                            "options": [{"label": "pg", "description": "pg"}],
                        }
                    ]
                },
            ),
        ]
        module_model.add([ToolCallStep(calls=calls), TextStep(text=f"{marker} done read-only")], match=marker)
        req = root_request(project, "reviewer", f"{marker} review read-only", scopes=["repo:src/**#fs/read"])
        req["timeout_seconds"] = 90
        sid = await run_root(engine, req, timeout=100)
        led = engine.ledger
        assert led is not None
        st = led.session(sid)
        assert st is not None
        assert st.status == "completed"
        perms = first(led, sid, "agent.spawned")["permissions"]
        assert perms["bash"] == "deny"
        assert perms["edit"] == "deny"
        assert perms["write"] == "deny"
        assert perms["external_directory"] == "deny"
        assert perms["question"] == "deny"
        assert perms["read"] == {"*": "allow", "*.env": "deny", "*.env.*": "deny", "*.env.example": "allow"}
        assert perms["grep"] == "allow"
        first_request = next(r for r in module_model.completions if r.conversation == marker)
        offered = {t["function"]["name"] for t in first_request.body["tools"]}
        assert {"read", "grep", "ledger_spawn_agent"} <= offered
        assert not offered & {"bash", "edit", "write", "question", "webfetch", "task"}
        recorded = [d for _, d in events(led, sid, ["tool.called"])]
        invalid = {c["input"].get("tool") for c in recorded if c["tool"] == "invalid"}
        assert invalid == {"bash", "write", "question"}
        read = [c for c in recorded if c["tool"] == "read"]
        assert len(read) == 1
        assert read[0]["status"] == "error"
        assert "prevents you from using this specific tool call" in read[0]["error"]
        assert "permission.decided" not in types_of(led, sid)
        assert not target.exists()
        assert st.last_output == f"{marker} done read-only"

    async def test_the_agents_configuration_is_not_editable(
        self, engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """An agent that may write anywhere in its project still cannot write the files that configure
        later agents there (a plugin in .opencode/ would run as code in every later OpenCode server; a
        role file would rewrite later agents' system prompts): real OpenCode refuses those writes, by
        the rules recorded at spawn, while the agent's other writes go through."""
        ok = project / f"{marker}.py"
        refused = [
            project / "opencode.json",
            project / ".opencode" / "plugin" / f"{marker}.ts",
            project / ".delegation-ledger" / "roles" / f"{marker}.md",
        ]
        calls = [
            ToolCall(name="write", arguments={"filePath": str(path), "content": "x = 1\n"}, id=f"call_{i}")
            for i, path in enumerate([ok, *refused])
        ]
        module_model.add([ToolCallStep(calls=calls), TextStep(text=f"{marker} done")], match=marker)
        req = root_request(
            project, "tester", f"{marker} write", scopes=["repo:**#fs/read", "repo:**#fs/write"]
        )
        sid = await run_root(engine, req, timeout=100)
        led = engine.ledger
        assert led is not None
        assert led.session(sid).status == "completed"  # type: ignore[union-attr]
        assert ok.read_text() == "x = 1\n"
        assert not any(path.exists() for path in refused)
        statuses = {d["input"]["filePath"]: d["status"] for _, d in events(led, sid, ["tool.called"])}
        assert statuses == {str(ok): "completed", **dict.fromkeys(map(str, refused), "error")}
        perms = first(led, sid, "agent.spawned")["permissions"]
        assert perms["write"]["*/.opencode/*"] == "deny"
        assert "permission.decided" not in types_of(led, sid)

    async def test_a_path_scope_limits_writes_to_its_path(
        self, engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """With `repo:<path>/**#fs/write`, real OpenCode asks about every file the agent writes, and the
        policy answers by the scope's path, as the gate matches scopes: inside it the write goes
        through, elsewhere in the project it is refused; both answers are recorded. The agent ends."""
        inside = project / marker / "src" / "ok.py"
        outside = project / marker / "notes.md"
        calls = [
            ToolCall(name="write", arguments={"filePath": str(inside), "content": "x = 1\n"}, id="call_in"),
            ToolCall(name="write", arguments={"filePath": str(outside), "content": "no\n"}, id="call_out"),
        ]
        module_model.add([ToolCallStep(calls=calls), TextStep(text=f"{marker} done")], match=marker)
        req = root_request(
            project, "tester", f"{marker} write", scopes=["repo:**#fs/read", f"repo:{marker}/src/**#fs/write"]
        )
        sid = await run_root(engine, req, timeout=100)
        led = engine.ledger
        assert led is not None
        assert led.session(sid).status == "completed"  # type: ignore[union-attr]
        assert inside.read_text() == "x = 1\n"
        assert not outside.exists()
        statuses = {d["input"]["filePath"]: d["status"] for _, d in events(led, sid, ["tool.called"])}
        assert statuses == {str(inside): "completed", str(outside): "error"}
        decided = dict((d["reply"], d["reason"]) for _, d in events(led, sid, ["permission.decided"]))
        assert sorted(decided) == ["once", "reject"]  # the two calls may be asked about in either order
        assert f"{marker}/src/ok.py by repo:{marker}/src/**#fs/write" in decided["once"]
        assert f"(repo:{marker}/notes.md) is outside the delegation's write scope(s)" in decided["reject"]
        assert first(led, sid, "agent.spawned")["permissions"]["write"]["*"] == "ask"
        # the audit judges the recorded calls by the same scope paths
        from engine.audit import build_report

        report = build_report(led, req["task_id"], session_id=sid)
        hop = report["tree"][0]
        coverage = {a["detail"]: a["coverage"] for a in hop["actions"] if a["kind"] == "tool"}
        (inside_cov,) = (c for d, c in coverage.items() if "ok.py" in d)
        (outside_cov,) = (c for d, c in coverage.items() if "notes.md" in d)
        assert inside_cov["covered"] is True
        assert f"inside the write scope repo:{marker}/src/**#fs/write" in inside_cov["by"]
        assert outside_cov["covered"] is False  # refused: it never ran, so no finding
        assert not [f for f in report["findings"] if f["code"] == "ACTION_NOT_COVERED"]

    async def test_free_text_capability_runs_commands_inside_the_project(
        self, engine: Engine, project: Path, module_model: ScriptedModel, marker: str
    ) -> None:
        """The ct_dev free-text capability lets the agent run commands in its project, unasked."""
        target = project / f"{marker}.ran"
        module_model.add(
            [
                ToolCallStep.of("bash", {"command": f"touch {target}", "description": "touch"}),
                EchoToolResultStep(prefix="ran: "),
            ],
            match=marker,
        )
        sid = await run_root(engine, root_request(project, "tester", f"{marker} run it"))
        led = engine.ledger
        assert led is not None
        assert target.exists()
        calls = [(d["tool"], d["status"]) for _, d in events(led, sid, ["tool.called"])]
        assert calls == [("bash", "completed")]
        assert "permission.decided" not in types_of(led, sid)


def _policy(**context: Any) -> PermissionPolicy:
    raw = root_request(Path("/srv/project"), "reviewer", "review", **context)
    return PermissionPolicy.from_request(SpawnRequest.model_validate(raw))


class TestPermissionPolicy:
    def test_structured_scopes_grant_only_their_actions(self) -> None:
        """A read scope allows reading tools and denies shell, edits, network and OpenCode's task."""
        policy = _policy(scopes=["repo:src/**#fs/read"])
        assert policy.decide("read", ["src/a.py"])[0] == "once"
        reply, reason = policy.decide("bash", ["ls"])
        assert reply == "reject"
        assert "shell/exec" in reason
        for perm in ("edit", "write", "webfetch", "task", "question", "doom_loop"):
            assert policy.decide(perm)[0] == "reject", perm
        assert policy.opencode_config()["grep"] == "allow"

    def test_secret_files_are_never_readable(self) -> None:
        """Whatever the capability, reading .env files is refused (OpenCode itself would only ask)."""
        for policy in (_policy(), _policy(scopes=["repo:src/**#fs/read"])):
            assert policy.decide("read", ["src/a.py"])[0] == "once"
            assert policy.decide("read", [".env"])[0] == "reject"
            assert policy.decide("read", ["config/.env.production"])[0] == "reject"
            assert policy.decide("read", [".env.example"])[0] == "once"
            assert policy.opencode_config()["read"]["*.env"] == "deny"

    def test_leaving_the_project_needs_an_explicit_scope(self) -> None:
        """`fs` on the repo does not cover fs/external; an explicit fs/external scope does."""
        assert _policy(scopes=["repo:src/**#fs"]).rules["external_directory"] == "deny"
        assert (
            _policy(scopes=["repo:src/**#fs", "ext:tmp/**#fs/external"]).rules["external_directory"]
            == "allow"
        )

    def test_unknown_permissions_are_rejected(self) -> None:
        """A question about a permission the policy does not know is rejected, and says why."""
        reply, reason = _policy().decide("mystery_tool")
        assert reply == "reject"
        assert "mystery_tool" in reason

    def test_the_agents_configuration_is_kept_from_edits(self) -> None:
        """Whatever may be edited, OpenCode's config, .opencode/ and the role catalogue may not, at any
        depth of the path (OpenCode matches relative to the worktree, "/" outside git), unless a write
        scope names one; a read scope or the whole repo names none."""
        for policy in (_policy(), _policy(scopes=["repo:**#fs/write", "repo:.opencode/**#fs/read"])):
            for perm in ("edit", "write"):
                assert policy.decide(perm, ["src/a.py"])[0] == "once"
                assert policy.decide(perm, ["docs/opencode.json.md"])[0] == "once"
                for path in (
                    "opencode.json",
                    "srv/project/opencode.jsonc",
                    ".opencode/plugin/p.ts",
                    "/srv/project/.opencode/tool/t.ts",
                    "srv/project/.delegation-ledger/roles/tester.md",
                ):
                    assert policy.decide(perm, [path])[0] == "reject", (perm, path)
            assert "not editable unless a write scope names it" in policy.reasons["edit"]
        named = _policy(scopes=["repo:**#fs/write", "repo:.opencode/**#fs/write", "repo:opencode.json#fs"])
        assert named.decide("write", ["srv/project/.opencode/agent/a.md"])[0] == "once"
        assert named.decide("write", ["opencode.json"])[0] == "once"
        assert named.decide("write", ["opencode.jsonc"])[0] == "reject"
        assert named.decide("write", [".delegation-ledger/roles/t.md"])[0] == "reject"
        assert _policy(scopes=["repo:src/**#fs/read"]).rules["edit"] == "deny"

    def test_path_scopes_limit_writes_as_the_gate_matches_them(self, tmp_path: Path) -> None:
        """`repo:<path>#fs/write` scopes make edits `ask`, answered by the gate's scope matching on the
        file's path in the project, whether OpenCode names it from the git work tree, from `/` (a folder
        outside git) or absolutely; a whole-repo scope, free text or another kind keeps them allowed."""
        repo = tmp_path / "repo"
        project = repo / "svc"
        (repo / ".git").mkdir(parents=True)
        project.mkdir()
        raw = root_request(
            project, "tester", "x", scopes=["repo:**#fs/read", "repo:src/**#fs/write", "repo:a.md#fs"]
        )
        policy = PermissionPolicy.from_request(SpawnRequest.model_validate(raw))
        assert policy.worktree == str(repo)
        assert policy.rules["edit"]["*"] == policy.rules["write"]["*"] == "ask"
        for path in ("svc/src/a.py", str(project / "src" / "b" / "c.py"), "svc/a.md"):
            assert policy.decide("write", [path])[0] == "once", path
        for path in (
            "svc/tests/t.py",
            "other/src/a.py",
            "svc/src/../x.py",
            "svc/src/.opencode/p.ts",
            "/etc/x",
        ):
            assert policy.decide("edit", [path])[0] == "reject", path
        assert policy.decide("edit", ["svc/src/a.py", "svc/b.py"])[0] == "reject"  # every file must be inside
        assert policy.decide("edit", [])[0] == "reject"
        outside_git = _policy(scopes=["repo:src/**#fs/write"])
        assert outside_git.worktree == "/"
        assert outside_git.decide("write", ["srv/project/src/a.py"])[0] == "once"
        assert outside_git.decide("write", ["srv/project/docs/a.md"])[0] == "reject"
        for unlimited in (
            _policy(),
            _policy(scopes=["repo:**#fs/write"]),
            _policy(scopes=["ext:tmp/**#fs/write"]),
        ):
            assert unlimited.rules["edit"]["*"] == "allow"
            assert unlimited.decide("edit", ["srv/project/docs/a.md"])[0] == "once"

    def test_no_shell_constraint(self) -> None:
        """A free-text constraint forbidding the shell turns bash off even without scopes."""
        policy = _policy(constraints=["Use Serena tools only", "Return reproducible test plan", "No shell"])
        assert policy.rules["bash"] == "deny"
        assert policy.rules["edit"]["*"] == "allow"
        assert policy.opencode_config()["bash"] == "deny"
