"""The offline end-to-end demo behind `ledger demo` (the README's first command).

A scripted OpenAI-compatible model stands in for the language model (the only stand-in: these
machines have no internet). Everything else is real: `ledger serve` runs as a separate process,
driven over stdio by a FastMCP client; agents run in real `opencode serve` processes; the root
agent delegates to a tester through OpenCode's own MCP client; the tester writes a file and then
tries to hand work back to its parent's role, which the gate refuses (CYC-01); the main agent's
own malformed delegation is refused too (ID-01, ID-03); a hanging agent is stopped; the ledger is
verified and signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError
from rich.tree import Tree

from cli.render import emit_json, out, styled
from engine.scripted_model import ScriptedModel
from engine.scripted_model.steps import HangStep, TextStep, ToolCallStep
from ledger import Ledger
from schemas.events import TERMINAL_STATUSES

FIXTURE = {
    "role": "backend_specialist",
    "task_id": "550e8400-e29b-41d4-a716-446655440000",
    "instructions": "Implement OAuth2 authentication endpoints with JWT validation",
    "expected_output": "Implementation plan plus unit tests",
    "context": {"framework": "FastAPI", "database": "PostgreSQL"},
    "model": "claude-sonnet-4",
    "original_task": {
        "task_id": "550e8400-e29b-41d4-a716-446655440000",
        "title": "Implement OAuth2 authentication",
        "description": "Deliver OAuth2 endpoints with JWT token support and tests",
        "requester": "Auctor",
        "requested_at": "2025-10-01T08:00:00Z",
    },
    "cap_origin": {
        "ultimate_authority": "Auctor",
        "original_scope": "Full system development authority",
        "granted_at": "2025-10-01T07:30:00Z",
        "grant_context": "ct_dev delegation charter",
    },
    "delegation_context": {
        "delegator": "Project Manager",
        "delegator_cap": "Delegation authority (Auctor, 2025-10-01T07:45:00Z)",
        "delegated_to": "backend_specialist",
        "delegated_cap": "Implement OAuth2 flow with automated tests",
        "constraints": ["Use Serena tools only", "Return reproducible test plan"],
        "phantom_level": "Delegation/Cap",
        "delegated_at": "2025-10-01T08:05:00Z",
    },
}


def _requests(project: Path) -> dict[str, dict[str, Any]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    root = copy.deepcopy(FIXTURE)
    root["project_directory"] = str(project)
    root["instructions"] = "[demo-root] " + root["instructions"] + "; delegate the unit tests to the tester."
    child = copy.deepcopy(root)
    child.update(
        role="tester",
        instructions="[demo-child] Write the unit tests for the OAuth2 endpoints.",
        expected_output="A test module",
    )
    child["delegation_context"] = dict(
        root["delegation_context"],
        delegator="backend_specialist",
        delegator_cap=root["delegation_context"]["delegated_cap"],
        delegated_to="tester",
        delegated_cap="Write unit tests for the OAuth2 flow",
        delegated_at=now,
    )
    back = copy.deepcopy(child)
    back.update(role="backend_specialist", instructions="[demo-back] Fix the endpoints yourself.")
    back["delegation_context"] = dict(
        child["delegation_context"],
        delegator="tester",
        delegator_cap=child["delegation_context"]["delegated_cap"],
        delegated_to="backend_specialist",
        delegated_cap="Fix the endpoints",
    )
    bad = copy.deepcopy(root)
    bad["instructions"] = "[demo-bad] Deploy to production."
    bad["original_task"]["requester"] = "Mallory"
    bad["delegation_context"]["delegated_to"] = "frontend_specialist"
    slow = copy.deepcopy(root)
    slow.update(role="reviewer", instructions="[demo-slow] Review the OAuth2 change.")
    slow["delegation_context"] = dict(
        root["delegation_context"], delegated_to="reviewer", delegated_cap="Review the OAuth2 change"
    )
    return {"root": root, "child": child, "back": back, "bad": bad, "slow": slow}


def _script(model: ScriptedModel, reqs: dict[str, dict[str, Any]], project: Path) -> None:
    test_file = project / "tests" / "test_oauth.py"
    model.add(
        [
            ToolCallStep.of("ledger_spawn_agent", reqs["child"]),
            TextStep(text="OAuth2 endpoints implemented; the unit tests are delegated to the tester."),
        ],
        match="[demo-root]",
    )
    model.add(
        [
            ToolCallStep.of(
                "write",
                {"filePath": str(test_file), "content": "def test_token_roundtrip():\n    assert True\n"},
            ),
            ToolCallStep.of("ledger_spawn_agent", reqs["back"]),
            TextStep(text="Wrote tests/test_oauth.py. Handing the fix back was refused (CYC-01)."),
        ],
        match="[demo-child]",
    )
    model.add([HangStep(keepalive=0.5)], match="[demo-slow]")


def _constitution(path: Path, project: Path) -> None:
    path.write_text(
        'profile = "default"\nmax_depth = 3\nclock_skew_seconds = 60\n'
        f"allowed_roots = [{json.dumps(str(project))}]\n"
        "[default_budget]\nmax_tokens = 200000\nmax_cost_usd = 5.0\n"
    )


def _step(text: str) -> None:
    out.print(styled(("▶", "bold cyan"), f" {text}"))


async def _wait_all_terminal(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = (await client.call_tool("list_active_sessions", {})).data["sessions"]
        if not active:
            return
        await asyncio.sleep(0.5)


async def run_demo(keep: Path | None, as_json: bool) -> bool:
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    project = work / "project"
    (project / "tests").mkdir(parents=True, exist_ok=True)
    db, keys, constitution = work / "ledger.db", work / "keys", work / "constitution.toml"
    _constitution(constitution, project)
    reqs = _requests(project)
    summary: dict[str, Any] = {"workspace": str(work)}
    t0 = time.monotonic()
    with ScriptedModel() as model:
        _script(model, reqs, project)
        env = {**os.environ, "LEDGER_KEYS_DIR": str(keys), "LOGFIRE_IGNORE_NO_CONFIG": "1"}
        args = [
            "-m",
            "cli.app",
            "--db",
            str(db),
            "serve",
            "--constitution",
            str(constitution),
            "--isolated",
            "--work-dir",
            str(work / "agents"),
            "--scripted-model",
            model.base_url,
            "--timeout",
            "120",
        ]
        transport = StdioTransport(sys.executable, args, env=env, cwd=str(work), log_file=work / "serve.log")
        if not as_json:
            out.print(styled(("delegation-ledger demo", "bold"), f" (offline; workspace {work})"))
            _step("starting `ledger serve` over stdio and connecting a FastMCP client")
        async with Client(transport, timeout=180) as client:
            tools = sorted(t.name for t in await client.list_tools())
            summary["tools"] = tools
            if not as_json:
                out.print(f"  {len(tools)} tools: {', '.join(tools)}")
                _step("spawn_agent: backend_specialist (the ct_dev example request)")
            root = (await client.call_tool("spawn_agent", reqs["root"])).data
            summary["root_session"] = root["session_id"]
            if not as_json:
                out.print(
                    f"  approved → session {root['session_id']} "
                    f"(warnings: {', '.join(w['rule'] for w in root['warnings']) or 'none'})"
                )
                _step("spawn_agent: a request whose requester is not the authority and whose role mismatches")
            try:
                await client.call_tool("spawn_agent", reqs["bad"])
                summary["refusal"] = None
            except ToolError as exc:
                summary["refusal"] = str(exc)
                if not as_json:
                    out.print(styled("  ", ("refused", "red"), ": " + str(exc).replace("\n", "\n    ")))
            if not as_json:
                _step("spawn_agent: a reviewer whose model never answers, then stop_agent")
            slow = (await client.call_tool("spawn_agent", reqs["slow"])).data["session_id"]
            for _ in range(120):
                st = (await client.call_tool("query_session", {"session_id": slow})).data
                if st["status"] == "running":
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)
            stopped = (
                await client.call_tool("stop_agent", {"session_id": slow, "reason": "demo: no answer"})
            ).data
            summary["stopped"] = stopped
            if not as_json:
                out.print(f"  session {slow} → {stopped['status']}")
                _step("wait_for_agent: the root delegates to the tester through OpenCode's own MCP client")
            done = (
                await client.call_tool(
                    "wait_for_agent", {"session_id": root["session_id"], "timeout_seconds": 120}
                )
            ).data
            await _wait_all_terminal(client, 120)
            chain = (await client.call_tool("get_delegation_chain", {"session_id": root["session_id"]})).data
            verified = (await client.call_tool("verify_ledger", {})).data
            summary.update(root_status=done["status"], chain=chain["tree"], verify_via_mcp=verified["ok"])
    os.environ["LEDGER_KEYS_DIR"] = str(keys)  # the demo's own key, made by its `ledger serve`
    with Ledger.open(db, create=False) as led:
        cp = led.checkpoint()
        report = led.verify()
        counts = Counter(e.type for e in led.entries())
        refusals = [
            (e.stream, [f["rule"] for f in (e.data() or {})["verdict"]["violations"]])
            for e in led.entries(types=["gate.decided"])
            if (e.data() or {})["verdict"]["decision"] == "rejected"
        ]
        sessions = {s.session_id: s for s in led.sessions()}
    test_file = project / "tests" / "test_oauth.py"
    tree = summary["chain"]
    child = tree["children"][0] if tree.get("children") else None
    checks = {
        "root completed": tree["status"] == "completed",
        "two-hop chain": child is not None and child["role"] == "tester" and child["status"] == "completed",
        "tester wrote its file": test_file.exists(),
        "main agent's bad request refused (ID-01, ID-03)": bool(summary["refusal"])
        and "ID-01" in summary["refusal"]
        and "ID-03" in summary["refusal"],
        "hand-back refused (CYC-01)": any("CYC-01" in rules for _, rules in refusals),
        "hanging agent stopped": summary["stopped"]["status"] == "stopped",
        "no session left running": all(s.status in TERMINAL_STATUSES for s in sessions.values()),
        "ledger verifies": report.ok and verified["ok"],
    }
    summary.update(
        checks=checks,
        events=dict(counts),
        entries=report.entries,
        checkpoint=cp.note,
        refusals=refusals,
        seconds=round(time.monotonic() - t0, 1),
    )
    if as_json:
        emit_json(summary)
    else:
        _render(summary, tree, report.entries, cp.note, counts, checks)
    if keep is None:
        import shutil

        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return all(checks.values())


def _render(
    summary: dict[str, Any],
    tree: dict[str, Any],
    entries: int,
    note: str,
    counts: Counter[str],
    checks: dict[str, bool],
) -> None:
    _step("the delegation chain, from the ledger")

    def add(node: Tree, st: dict[str, Any]) -> None:
        branch = node.add(
            styled(
                (st["role"], "bold"),
                f" {st['session_id'][:8]} ",
                (st["status"], "green"),
                f" depth {st['depth']}, {st['tokens_used']} tokens, ${st['cost_usd']:.4f}, "
                f"{st['tool_calls']} tool call(s)",
            )
        )
        for c in st.get("children", []):
            add(branch, c)

    root = Tree("main agent (MCP client over stdio)")
    add(root, tree)
    out.print(root, soft_wrap=False)  # a soft-wrapping console would crop a long branch
    _step(f"verify: {entries} entries, every link and payload hash checked; signed checkpoint:")
    out.print("  " + note.rstrip().replace("\n", "\n  "))
    out.print("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, ok in checks.items():
        out.print(styled("  ", ("✓", "green") if ok else ("✗", "red"), f" {name}"))
    out.print(
        styled(
            ("demo passed" if all(checks.values()) else "demo FAILED", "bold"), f" in {summary['seconds']} s"
        )
    )
