"""End to end across processes: `ledger serve` over stdio driven by a FastMCP client, and `ledger demo`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import (
    REPO,
    fixture_request,
    opencode_processes,
    quiet_logfire,  # noqa: F401 - a fixture
    types_of,
    wait_no_opencode,
)
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from engine.scripted_model import ScriptedModel, TextStep
from ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_logfire")]

TOOLS = {
    "spawn_agent",
    "query_session",
    "send_to_agent",
    "get_agent_output",
    "stop_agent",
    "list_active_sessions",
    "get_agent_capabilities",
    "list_available_agent_roles",
    "list_opencode_models",
    "delegate",
    "wait_for_agent",
    "delegate_batch",
    "revoke_delegation",
    "get_delegation_chain",
    "verify_ledger",
}


@pytest.mark.asyncio
async def test_fixture_request_over_stdio(
    tmp_path: Path, scripted_model: ScriptedModel, keys_dir: Path
) -> None:
    """A client process drives `ledger serve` (stdio) through the ct_dev request to completion; when the
    client leaves, the server stops its agents, and its ledger verifies from outside."""
    project, work, db = tmp_path / "project", tmp_path / "agents", tmp_path / "ledger.db"
    project.mkdir()
    reply = "OAuth2 plan with tests, over stdio."
    scripted_model.add([TextStep(text=reply)])
    args = [
        "-m",
        "cli.app",
        "--db",
        str(db),
        "serve",
        "--isolated",
        "--work-dir",
        str(work),
        "--scripted-model",
        scripted_model.base_url,
        "--allow-root",
        str(project),
        "--timeout",
        "120",
    ]
    env = {**os.environ, "LOGFIRE_IGNORE_NO_CONFIG": "1", "LEDGER_KEYS_DIR": str(keys_dir)}
    # keep_alive=False: the server process ends with the client session (FastMCP keeps it by default,
    # and a live `ledger serve` rightly keeps its warm pool of OpenCode servers)
    transport = StdioTransport(
        sys.executable, args, env=env, cwd=str(REPO), log_file=tmp_path / "serve.log", keep_alive=False
    )
    async with asyncio.timeout(150):
        async with Client(transport, timeout=120) as client:
            tools = {t.name for t in await client.list_tools()}
            assert tools >= TOOLS
            spawned = (await client.call_tool("spawn_agent", fixture_request(project))).data
            assert spawned["decision"] == "approved"
            assert [w["rule"] for w in spawned["warnings"]] == ["ATT-02"]
            sid = spawned["session_id"]
            done = (
                await client.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 120})
            ).data
            assert done["status"] == "completed"
            assert done["output"] == reply
            assert (await client.call_tool("verify_ledger", {})).data["ok"] is True
    # the server stops its agents and pool as it ends; whatever a killed server leaves, its watchdogs end
    await wait_no_opencode(work, timeout=15)
    with Ledger.open(db, create=False) as led:
        kinds = types_of(led, sid)
        assert kinds[:3] == ["delegation.requested", "gate.decided", "agent.spawned"]
        assert kinds[-1] == "agent.completed"
        assert led.session(sid).last_output == reply  # type: ignore[union-attr]
        assert led.verify().ok


def test_ledger_demo_json(tmp_path: Path) -> None:
    """`ledger demo --json` (its own scripted model, `ledger serve` over stdio, a two-hop chain, refusals,
    a stop) passes every one of its checks."""
    env = {**os.environ, "LOGFIRE_IGNORE_NO_CONFIG": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.app", "demo", "--json", "--dir", str(tmp_path / "demo")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["checks"], summary
    assert all(summary["checks"].values()), summary["checks"]
    assert summary["events"]["agent.completed"] >= 2
    assert any("CYC-01" in rules for _, rules in summary["refusals"])
    assert opencode_processes(tmp_path / "demo") == []
