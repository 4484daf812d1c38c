"""Telemetry at the engine's edges: logfire spans for tool calls, gate decisions, spawns, agent starts and
ledger appends (captured with logfire's own test exporter, `capfire`); and nothing leaves the
machine without a token (`send_to_logfire="if-token-present"`), observed with a socket audit hook.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from engine_support import REPO, fixture_request, recorded_session, root_request, running_engine
from fastmcp import Client
from fastmcp.exceptions import ToolError
from logfire.testing import CaptureLogfire

from engine.scripted_model import ScriptedModel, TextStep


def spans(capfire: CaptureLogfire) -> list[dict[str, Any]]:
    return capfire.exporter.exported_spans_as_dict()


def messages(found: list[dict[str, Any]]) -> list[str]:
    return [s["attributes"].get("logfire.msg", s["name"]) for s in found]


def by_id(found: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {s["context"]["span_id"]: s for s in found}


OURS = {
    "mcp.tool {tool}",
    "delegation.spawn",
    "gate.evaluate",
    "agent.start {role}",
    "ledger.append {event_type}",
}


def ancestors(span: dict[str, Any], index: dict[int, dict[str, Any]]) -> list[str]:
    """Names of the engine's own spans above ``span``, nearest first (FastMCP's and the SDK's skipped)."""
    out = []
    parent = span.get("parent")
    while parent is not None and parent["span_id"] in index:
        node = index[parent["span_id"]]
        if node["name"] in OURS:
            out.append(node["name"])
        parent = node.get("parent")
    return out


@pytest.mark.asyncio
async def test_refused_spawn_emits_tool_spawn_gate_and_append_spans(
    tmp_path: Path, scripted_model: ScriptedModel, capfire: CaptureLogfire
) -> None:
    """A spawn_agent call (refused here, so no agent starts) is traced: the tool span holds the spawn span,
    which holds the gate's span (with its decision and rules) and one append span per recorded event."""
    async with running_engine(tmp_path, scripted_model) as engine, Client(engine.mcp) as c:
        capfire.exporter.clear()
        with pytest.raises(ToolError) as info:
            await c.call_tool("spawn_agent", root_request(tmp_path / "project", "wizard", "cast"))
        await c.call_tool("verify_ledger", {})
    sid = recorded_session(str(info.value))
    found = spans(capfire)
    msgs = messages(found)
    assert "mcp.tool spawn_agent" in msgs
    assert "mcp.tool verify_ledger" in msgs
    index = by_id(found)
    [spawn] = [s for s in found if s["name"] == "delegation.spawn"]
    assert spawn["attributes"]["delegation_id"] == sid
    assert spawn["attributes"]["role"] == "wizard"
    assert ancestors(spawn, index) == ["mcp.tool {tool}"]
    [gate] = [s for s in found if s["name"] == "gate.evaluate"]
    assert gate["attributes"]["decision"] == "rejected"
    assert json.loads(gate["attributes"]["rules"]) == ["ROLE-01"]  # logfire stores lists as JSON
    assert ancestors(gate, index) == ["delegation.spawn", "mcp.tool {tool}"]
    appends = [
        s for s in found if s["name"] == "ledger.append {event_type}" and s["attributes"]["stream"] == sid
    ]
    assert [s["attributes"]["event_type"] for s in appends] == ["delegation.requested", "gate.decided"]
    assert all(ancestors(s, index)[0] == "delegation.spawn" for s in appends)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_a_running_agent_is_traced_from_start_to_completion(
    tmp_path: Path, scripted_model: ScriptedModel, capfire: CaptureLogfire
) -> None:
    """An approved delegation adds the agent's start (its `opencode serve`) and an append span for each event
    the supervisor records, up to the terminal one."""
    scripted_model.add([TextStep(text="traced")])
    async with (
        asyncio.timeout(90),
        running_engine(tmp_path, scripted_model) as engine,
        Client(engine.mcp) as c,
    ):
        capfire.exporter.clear()
        sid = (await c.call_tool("spawn_agent", fixture_request(tmp_path / "project"))).data["session_id"]
        await c.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 60})
    found = spans(capfire)
    [gate] = [s for s in found if s["name"] == "gate.evaluate"]
    assert gate["attributes"]["decision"] == "approved"
    [start] = [s for s in found if s["name"] == "agent.start {role}"]
    assert start["attributes"]["delegation_id"] == sid
    assert start["attributes"]["logfire.msg"] == "agent.start backend_specialist"
    assert start["end_time"] > start["start_time"]
    recorded = [
        s["attributes"]["event_type"]
        for s in found
        if s["name"] == "ledger.append {event_type}" and s["attributes"]["stream"] == sid
    ]
    assert recorded[:3] == ["delegation.requested", "gate.decided", "agent.spawned"]
    assert "output.received" in recorded
    assert recorded[-1] == "agent.completed"
    assert "mcp.tool wait_for_agent" in messages(found)


PROBE = textwrap.dedent(
    """
    import json, os, sys
    seen = []
    def hook(event, args):
        if event == "socket.connect":
            seen.append(repr(args[1]))
    sys.addaudithook(hook)
    import logfire
    from engine.runtime import configure_telemetry
    configure_telemetry()
    with logfire.span("probe {n}", n=1):
        logfire.info("hello")
    logfire.force_flush(timeout_millis=3000)
    print(json.dumps(seen))
    sys.stdout.flush()
    os._exit(0)
    """
)


def _connections(token: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFIRE_")}
    env["LOGFIRE_BASE_URL"] = "http://127.0.0.1:9"  # the discard port: nothing listens, nothing leaves
    if token is not None:
        env["LOGFIRE_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_no_token_means_no_network() -> None:
    """configure_telemetry() without LOGFIRE_TOKEN opens no connection while spans are made and flushed;
    with a token the same process does try to export (so the probe can see it)."""
    assert _connections(None) == []
    assert any("127.0.0.1" in c and "9" in c for c in _connections("pylf_v1_us_" + "0" * 40))
