"""A real delegation chain for the audit tests, built once through the engine.

Everything is real but the model: an `Engine` (ledger, gate, FastMCP server), real `opencode serve`
agents, nested delegation through OpenCode's own MCP client (`ledger_spawn_agent`), the scripted
model as the only stand-in. The chain of task TASK:

    root R (backend_specialist, free-text capability)   writes src/oauth.py, delegates to C
      C (tester, scopes repo:tests/**, one added constraint)   writes a test, hands work back:
        back (backend_specialist)                            REFUSED (CYC-01)
    bad (main agent's request; requester and role wrong)     REFUSED (ID-01, ID-03)
    H (reviewer) delegates to H2 (researcher); both hang     H REVOKED with its subtree [H2]
    B (researcher, budget max_tokens 100, usage 5,050)       budget.exceeded, failed

and a clean task CLEAN_TASK: one tester that completes (it tries `ledger_audit_task` for the whole
task, which a sub-agent may not do: a recorded tool error). After the engine stops, a signed
checkpoint is written.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from typer.testing import CliRunner

from cli.app import app
from engine.runtime import Engine
from engine.scripted_model import HangStep, ScriptedModel, TextStep, ToolCallStep, Usage
from engine.settings import EngineSettings
from ledger import Ledger
from schemas.events import TERMINAL_STATUSES

FIXTURE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "ct_dev_spawn_request.json").read_text()
)
TASK = FIXTURE["task_id"]
CLEAN_TASK = "9b7c1e52-0f3a-4c8e-9d21-3a5e7f0b1c44"
ORIGIN_SCOPES = ["repo:src/**#fs", "repo:tests/**#fs", "shell#exec"]
CHILD_SCOPES = ["repo:tests/**#fs/read", "repo:tests/**#fs/write"]
ADDED_CONSTRAINT = "Only touch files under tests/"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def root_request(project: Path, role: str, marker: str, *, task: str = TASK, **dc: Any) -> dict[str, Any]:
    req = copy.deepcopy(FIXTURE)
    req.update(
        role=role,
        project_directory=str(project),
        task_id=task,
        instructions=f"[{marker}] {FIXTURE['instructions']}",
    )
    req["original_task"]["task_id"] = task
    req["cap_origin"]["scopes"] = ORIGIN_SCOPES
    req["delegation_context"].update(
        delegated_to=role, delegated_cap=f"{role}: OAuth2 work", delegated_at=_now(), **dc
    )
    return req


def child_request(parent: dict[str, Any], role: str, marker: str, **dc: Any) -> dict[str, Any]:
    child = copy.deepcopy(parent)
    child.update(role=role, instructions=f"[{marker}] {role}: your part of the OAuth2 work")
    pdc = parent["delegation_context"]
    child["delegation_context"] = {
        **{k: v for k, v in pdc.items() if k not in ("budget", "scopes")},
        "delegator": pdc["delegated_to"],
        "delegator_cap": pdc["delegated_cap"],
        "delegated_to": role,
        "delegated_cap": f"{role}: part of the OAuth2 work",
        "delegated_at": _now(),
        **dc,
    }
    return child


@dataclass
class Chain:
    base: Path
    db: Path
    keys: Path
    constitution: Path
    project: Path
    ids: dict[str, str] = field(default_factory=dict)
    mcp_report: dict[str, Any] = field(default_factory=dict)
    mcp_unknown_error: str = ""
    seconds: float = 0.0

    def copy_to(self, target: Path) -> Path:
        """A copy of the ledger file (same ledger id, so the same key signs it) to change freely."""
        target.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.db}{suffix}")
            if src.exists():
                shutil.copy2(src, target / f"ledger.db{suffix}")
        return target / "ledger.db"


def _script(model: ScriptedModel, reqs: dict[str, dict[str, Any]], project: Path) -> None:
    model.add(
        [
            ToolCallStep.of(
                "write",
                {
                    "filePath": str(project / "src" / "oauth.py"),
                    "content": "def token():\n    return 'jwt'\n",
                },
            ),
            ToolCallStep.of("ledger_spawn_agent", reqs["child"]),
            TextStep(text="OAuth2 endpoints written; the tests are delegated to the tester."),
        ],
        match="[audit-root]",
    )
    model.add(
        [
            ToolCallStep.of(
                "write",
                {
                    "filePath": str(project / "tests" / "test_oauth.py"),
                    "content": "def test_token():\n    assert True\n",
                },
            ),
            ToolCallStep.of("ledger_spawn_agent", reqs["back"]),
            TextStep(text="Tests written; handing the fix back was refused."),
        ],
        match="[audit-child]",
    )
    model.add(
        [ToolCallStep.of("ledger_spawn_agent", reqs["hang_child"]), HangStep(keepalive=0.5)],
        match="[audit-hang]",
    )
    model.add([HangStep(keepalive=0.5)], match="[audit-subhang]")
    model.add(
        [TextStep(text="A long research summary.", usage=Usage(prompt_tokens=5000, completion_tokens=50))],
        match="[audit-budget]",
    )
    model.add(
        [ToolCallStep.of("ledger_audit_task", {"task_id": CLEAN_TASK}), TextStep(text="Clean task done.")],
        match="[audit-clean]",
    )


def _requests(project: Path) -> dict[str, dict[str, Any]]:
    root = root_request(project, "backend_specialist", "audit-root")
    child = child_request(
        root,
        "tester",
        "audit-child",
        scopes=CHILD_SCOPES,
        constraints=[*root["delegation_context"]["constraints"], ADDED_CONSTRAINT],
    )
    back = child_request(child, "backend_specialist", "audit-back")
    bad = root_request(project, "backend_specialist", "audit-bad")
    bad["original_task"]["requester"] = "Mallory"
    bad["delegation_context"]["delegated_to"] = "frontend_specialist"
    hang = root_request(project, "reviewer", "audit-hang")
    hang_child = child_request(hang, "researcher", "audit-subhang")
    budget = root_request(project, "researcher", "audit-budget", budget={"max_tokens": 100})
    clean = root_request(project, "tester", "audit-clean", task=CLEAN_TASK)
    return {
        "root": root,
        "child": child,
        "back": back,
        "bad": bad,
        "hang": hang,
        "hang_child": hang_child,
        "budget": budget,
        "clean": clean,
    }


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _spawned(led: Ledger, role: str, parent: str | None) -> str | None:
    for e in led.entries(types=["agent.spawned"]):
        d = e.data() or {}
        if d.get("role") == role and d.get("parent_session_id") == parent:
            return str(d["session_id"])
    return None


def _refused_child(led: Ledger, parent: str) -> str | None:
    for e in led.entries(types=["gate.decided"]):
        d = e.data() or {}
        if d.get("parent_session_id") == parent and d["verdict"]["decision"] == "rejected":
            return e.stream
    return None


async def _drive(chain: Chain, model: ScriptedModel) -> None:
    reqs = _requests(chain.project)
    _script(model, reqs, chain.project)
    settings = EngineSettings(
        db_path=chain.db,
        constitution_path=chain.constitution,
        isolated=True,
        work_dir=chain.base / "agents",
        default_timeout_s=120.0,
        stop_grace_s=2.0,
        max_concurrent=6,
    )
    engine = Engine(settings, model_base_url=model.base_url)
    await engine.start()
    try:
        led = engine.ledger
        assert led is not None
        assert engine.mcp is not None
        ids = chain.ids
        async with Client(engine.mcp, timeout=180) as client:
            for name in ("root", "hang", "budget", "clean"):
                ids[name] = (await client.call_tool("spawn_agent", reqs[name])).data["session_id"]
            with pytest.raises(ToolError) as refused:
                await client.call_tool("spawn_agent", reqs["bad"])
            ids["bad"] = re.search(r"recorded as ([0-9a-f-]{36})", str(refused.value)).group(1)  # type: ignore[union-attr]
            ids["hang_child"] = await _until(
                lambda: _spawned(led, "researcher", ids["hang"]), 120, "H2 spawned"
            )
            await asyncio.sleep(1.0)
            await client.call_tool(
                "revoke_delegation", {"session_id": ids["hang"], "reason": "no longer needed"}
            )
            await client.call_tool("wait_for_agent", {"session_id": ids["root"], "timeout_seconds": 120})
            await _until(
                lambda: (
                    all(s.status in TERMINAL_STATUSES for s in led.sessions()) and len(led.sessions()) >= 6
                ),
                180,
                "every session to end",
            )
            ids["child"] = _spawned(led, "tester", ids["root"]) or ""
            ids["back"] = _refused_child(led, ids["child"]) or ""
            chain.mcp_report = (await client.call_tool("audit_task", {"task_id": TASK})).data
            with pytest.raises(ToolError) as unknown:
                await client.call_tool("audit_task", {"task_id": "no-such-task"})
            chain.mcp_unknown_error = str(unknown.value)
    finally:
        await engine.stop()


def build_chain(base: Path) -> Chain:
    """Build the chain (see the module docstring) under `base`; returns where everything is."""
    project = base / "project"
    for sub in ("src", "tests"):
        (project / sub).mkdir(parents=True, exist_ok=True)
    chain = Chain(
        base=base,
        db=base / "ledger.db",
        keys=base / "keys",
        constitution=base / "constitution.toml",
        project=project,
    )
    chain.constitution.write_text(
        f'profile = "default"\nmax_depth = 3\nallowed_roots = [{json.dumps(str(project))}]\n'
        "[default_budget]\nmax_tokens = 200000\nmax_cost_usd = 5.0\n"
    )
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEDGER_KEYS_DIR", str(chain.keys))
        mp.setenv("LOGFIRE_IGNORE_NO_CONFIG", "1")
        with ScriptedModel() as model:
            asyncio.run(_drive(chain, model))
        with Ledger.open(chain.db, create=False) as led:
            led.checkpoint()
    chain.seconds = time.monotonic() - t0
    return chain


class Cli:
    """`ledger --db DB audit ...` in-process; returns (exit code, stdout, stderr)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def __call__(self, *args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, ["--db", str(self.db), "audit", *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        code, out, _ = self(*args, "--format", "json")
        return code, json.loads(out)
