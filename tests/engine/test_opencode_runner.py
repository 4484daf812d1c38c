"""`opencode serve` for real: start, talk, tools, permissions, abort, stop, and no orphans ever.

Only the model is scripted; OpenCode, its HTTP API, its tools and its processes are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.errors import OpenCodeHTTPError, OpenCodeStartError, OpenCodeTimeout
from engine.opencode_client import NOISE_EVENT_TYPES, EventStream, OpenCodeEvent
from engine.opencode_config import (
    OPENCODE_VERSION,
    ModelCost,
    build_agent_config,
    remote_mcp,
    session_permission_rules,
)
from engine.opencode_runner import BUNDLED_BINARY, OpenCodeService, find_opencode_binary, process_alive
from engine.scripted_model import (
    EchoToolResultStep,
    HangStep,
    ScriptedModel,
    StreamStep,
    TextStep,
    ToolCallStep,
    Usage,
)

integration = pytest.mark.integration
module_loop = pytest.mark.asyncio(loop_scope="module")
ProcessTable = dict[int, tuple[int, int, str]]


async def until_idle(events: EventStream, session_id: str, timeout: float = 30.0) -> list[OpenCodeEvent]:
    """Every event up to and including the session's ``session.idle``."""
    seen: list[OpenCodeEvent] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            seen.append(event)
            if event.type == "session.idle" and event.session_id == session_id:
                return seen
    raise AssertionError("event stream ended before the session went idle")


def last_assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in reversed(messages) if m["info"]["role"] == "assistant")


def texts(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["parts"] if p["type"] == "text")


async def wait_for_process(table: Callable[[], ProcessTable], needle: str, timeout: float = 30.0) -> int:
    """The pid of a live process whose command line holds ``needle``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [pid for pid, (_, _, cmd) in table().items() if needle in cmd and "bash -c" in cmd]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no process with {needle!r} appeared in {timeout}s")


# -- finding the binary and building configs (no server needed) -------------------------------


class TestFindBinary:
    def test_env_var_names_the_binary(self, tmp_path: Path) -> None:
        """OPENCODE_BIN wins when it names an executable file."""
        fake = tmp_path / "opencode"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
        assert find_opencode_binary({"OPENCODE_BIN": str(fake)}) == fake

    def test_env_var_must_be_executable(self, tmp_path: Path) -> None:
        """An OPENCODE_BIN that is not executable is refused with the value it had."""
        fake = tmp_path / "opencode"
        fake.write_text("not a program")
        with pytest.raises(OpenCodeStartError, match="OPENCODE_BIN"):
            find_opencode_binary({"OPENCODE_BIN": str(fake)})

    def test_bundled_binary_is_the_default(self) -> None:
        """Without OPENCODE_BIN the pinned npm install under engine/npm is used."""
        assert find_opencode_binary({}) == BUNDLED_BINARY

    def test_lock_lists_every_platform_package(self) -> None:
        """The lock has an entry for each optional platform package, as `npm ci` insists on."""
        lock = json.loads((BUNDLED_BINARY.parents[2] / "package-lock.json").read_text())["packages"]
        wanted = lock["node_modules/opencode-ai"]["optionalDependencies"]
        assert lock["node_modules/opencode-ai"]["version"] == OPENCODE_VERSION
        assert {name: lock[f"node_modules/{name}"]["version"] for name in wanted} == wanted

    def test_pin_matches_the_npm_manifest(self) -> None:
        """engine/npm/package.json pins exactly the version the engine was verified against."""
        manifest = json.loads((BUNDLED_BINARY.parents[2] / "package.json").read_text())
        assert manifest["dependencies"]["opencode-ai"] == OPENCODE_VERSION


class TestAgentConfig:
    def test_scripted_model_permission_and_mcp(self) -> None:
        """The config names the scripted provider with its cost, our permission rules and MCP servers."""
        config = build_agent_config(
            model_base_url="http://127.0.0.1:9/v1",
            permission={"edit": "allow", "bash": {"*": "ask", "git status": "allow"}},
            mcp={"ledger": remote_mcp("http://127.0.0.1:8/mcp", "tok")},
        )
        provider = config["provider"]["scripted"]
        assert provider["options"]["baseURL"] == "http://127.0.0.1:9/v1"
        assert provider["models"]["scripted-1"]["cost"]["input"] == 3.0
        assert config["model"] == config["small_model"] == "scripted/scripted-1"
        assert config["permission"]["bash"]["git status"] == "allow"
        assert config["mcp"]["ledger"] == {
            "type": "remote",
            "url": "http://127.0.0.1:8/mcp",
            "enabled": True,
            "headers": {"Authorization": "Bearer tok"},
        }

    def test_unknown_permission_action_is_refused(self) -> None:
        """A permission action other than allow/ask/deny is refused, naming what it got."""
        with pytest.raises(ValueError, match="got 'maybe'"):
            build_agent_config(permission={"bash": {"*": "maybe"}})

    def test_mcp_entry_needs_a_type_and_target(self) -> None:
        """An MCP entry without a known type, or a remote one without url, is refused."""
        with pytest.raises(ValueError, match="type"):
            build_agent_config(mcp={"x": {"url": "http://h"}})
        with pytest.raises(ValueError, match="no url"):
            build_agent_config(mcp={"x": {"type": "remote"}})

    def test_extra_is_merged_key_by_key(self) -> None:
        """``extra`` adds to nested blocks instead of replacing them."""
        config = build_agent_config(
            model_base_url="http://h/v1", extra={"provider": {"scripted": {"options": {"timeout": 5}}}}
        )
        assert config["provider"]["scripted"]["options"] == {
            "baseURL": "http://h/v1",
            "apiKey": "scripted",
            "timeout": 5,
        }

    def test_session_permission_rules(self) -> None:
        """Mapping-form rules become POST /session's rule list, in order."""
        assert session_permission_rules({"bash": {"*": "ask", "ls": "allow"}, "edit": "deny"}) == [
            {"permission": "bash", "pattern": "*", "action": "ask"},
            {"permission": "bash", "pattern": "ls", "action": "allow"},
            {"permission": "edit", "pattern": "*", "action": "deny"},
        ]


class TestEnvironment:
    def test_isolated_mode_owns_every_folder(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Isolated mode keeps only a few variables of ours and puts every OpenCode folder in state_dir."""
        monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
        service = OpenCodeService(tmp_path, tmp_path / "state", config={"share": "disabled"})
        env = service.build_env("pw")
        assert "ANTHROPIC_API_KEY" not in env
        assert env["HOME"] == str(tmp_path / "state" / "home")
        assert env["OPENCODE_DB"] == str(tmp_path / "state" / "opencode.db")
        assert env["OPENCODE_CONFIG_DIR"] == str(tmp_path / "state" / "xdg" / "config" / "opencode")
        assert env["npm_config_offline"] == "true"
        assert env["npm_config_cache"] == str(tmp_path / "state" / "npm-cache")
        assert env["OPENCODE_DISABLE_PROJECT_CONFIG"] == "1"
        assert (env["OPENCODE_SERVER_USERNAME"], env["OPENCODE_SERVER_PASSWORD"]) == ("opencode", "pw")
        assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == {"share": "disabled"}

    def test_isolated_mode_with_an_npm_cache_goes_online(self, tmp_path: Path) -> None:
        """Given an npm cache, isolated mode lets OpenCode's npm use it and the registry."""
        env = OpenCodeService(tmp_path, tmp_path / "s", npm_cache=tmp_path / "npm").build_env("pw")
        assert env["npm_config_cache"] == str(tmp_path / "npm")
        assert "npm_config_offline" not in env

    def test_production_mode_keeps_the_users_setup(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Production mode keeps HOME, credentials and project config, and layers our config on top."""
        monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
        service = OpenCodeService(
            tmp_path, tmp_path / "state", config={"share": "disabled"}, mode="production"
        )
        env = service.build_env("pw")
        assert env["ANTHROPIC_API_KEY"] == "secret"
        assert env["HOME"] == os.environ["HOME"]
        assert "OPENCODE_DB" not in env or env["OPENCODE_DB"] == os.environ.get("OPENCODE_DB")
        assert "OPENCODE_DISABLE_PROJECT_CONFIG" not in env
        assert env["OPENCODE_SERVER_PASSWORD"] == "pw"
        assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == {"share": "disabled"}

    def test_unknown_mode_is_refused(self, tmp_path: Path) -> None:
        """Only 'isolated' and 'production' are modes."""
        with pytest.raises(ValueError, match="got 'test'"):
            OpenCodeService(tmp_path, tmp_path, mode="test")  # type: ignore[arg-type]


# -- start failures, with stand-in binaries (real processes) ----------------------------------


def fake_binary(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-opencode"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


class TestStartFailures:
    async def test_process_exiting_at_start(self, tmp_path: Path) -> None:
        """A server that dies while starting raises OpenCodeStartError with its exit status and output."""
        service = OpenCodeService(
            tmp_path, tmp_path / "state", binary=fake_binary(tmp_path, "echo boom >&2; exit 3")
        )
        with pytest.raises(OpenCodeStartError) as caught:
            await service.start()
        assert caught.value.returncode == 3
        assert "boom" in caught.value.log_tail
        assert "exit status: 3" in caught.value.diagnostics()
        assert not service.is_alive()

    async def test_no_listening_line_times_out_and_leaves_nothing(
        self, tmp_path: Path, process_table: Callable[[], ProcessTable]
    ) -> None:
        """A server that never says where it listens times out, and its processes are gone afterwards."""
        token = f"{os.getpid()}.{time.monotonic_ns() % 10_000}"
        binary = fake_binary(tmp_path, f"exec sleep 77{token}")
        service = OpenCodeService(tmp_path, tmp_path / "state", binary=binary, start_timeout=1.0)
        with pytest.raises(OpenCodeTimeout, match="listening"):
            await service.start()
        assert not [pid for pid, (_, _, cmd) in process_table().items() if f"sleep 77{token}" in cmd]

    async def test_missing_workdir_is_refused(self, tmp_path: Path) -> None:
        """A workdir that does not exist is refused before anything starts."""
        service = OpenCodeService(
            tmp_path / "nope", tmp_path / "state", binary=fake_binary(tmp_path, "exit 0")
        )
        with pytest.raises(OpenCodeStartError, match="workdir"):
            await service.start()


# -- one shared real server -------------------------------------------------------------------


@integration
@module_loop
class TestServer:
    async def test_healthy_with_the_pinned_version(self, opencode: OpenCodeService) -> None:
        """The started server is alive and reports itself healthy at the pinned version."""
        assert opencode.is_alive()
        assert await opencode.health() == {"healthy": True, "version": OPENCODE_VERSION}
        assert opencode.info.version == OPENCODE_VERSION

    async def test_port_comes_from_its_output(self, opencode: OpenCodeService, process_table: Any) -> None:
        """The URL is parsed from the server's own 'listening' line; pid and group are the real ones."""
        info = opencode.info
        assert info.url == f"http://127.0.0.1:{info.port}"
        assert f"opencode server listening on http://127.0.0.1:{info.port}" in opencode.log_path.read_text()
        _, pgid, cmd = process_table()[info.pid]
        assert "opencode serve" in cmd
        assert pgid == info.pgid != os.getpgrp()

    async def test_password_is_required(self, opencode: OpenCodeService) -> None:
        """Every route, health included, answers 401 without the server's password."""
        async with httpx.AsyncClient(base_url=opencode.url) as anonymous:
            assert (await anonymous.get("/global/health")).status_code == 401
            wrong = await anonymous.get("/session", auth=("opencode", "not-the-password"))
            assert wrong.status_code == 401
            right = await anonymous.get("/global/health", auth=("opencode", opencode.info.password))
            assert right.status_code == 200

    async def test_environment_is_isolated(self, opencode: OpenCodeService) -> None:
        """The server's HOME, database and config live in its state folder, and nothing else leaks in."""
        raw = Path(f"/proc/{opencode.info.pid}/environ").read_bytes()
        env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        state = str(opencode.state_dir)
        for key in (
            "HOME",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            "OPENCODE_CONFIG_DIR",
            "OPENCODE_DB",
            "TMPDIR",
        ):
            assert env[key].startswith(state), key
        assert env["OPENCODE_DISABLE_PROJECT_CONFIG"] == "1"
        assert env["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
        assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == opencode.config
        assert "PYTEST_CURRENT_TEST" not in env

    async def test_agents_and_providers(self, opencode: OpenCodeService) -> None:
        """GET /agent lists the build agent; GET /config/providers shows the scripted model with its cost."""
        assert "build" in {a["name"] for a in await opencode.client.agents()}
        providers = (await opencode.client.providers())["providers"]
        scripted = next(p for p in providers if p["id"] == "scripted")
        assert scripted["models"]["scripted-1"]["cost"]["input"] == 3.0

    async def test_event_stream_times_out_and_closes(self, opencode: OpenCodeService) -> None:
        """Waiting in vain raises OpenCodeTimeout; leaving the block closes the stream for good."""
        async with opencode.client.events() as events:
            with pytest.raises(OpenCodeTimeout):
                await events.wait_for(lambda e: False, timeout=0.3)
        with pytest.raises(StopAsyncIteration):
            await events.next(timeout=1)

    async def test_http_errors_are_translated(self, opencode: OpenCodeService) -> None:
        """An API error comes out as OpenCodeHTTPError carrying the status."""
        with pytest.raises(OpenCodeHTTPError) as caught:
            await opencode.client.get_session("ses_does_not_exist")
        assert caught.value.status is not None
        assert caught.value.status >= 400


@integration
@module_loop
class TestSessions:
    async def test_prompt_reply_in_events_and_messages(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """A scripted reply streams through events and lands in the messages with its tokens and cost."""
        text = f"Hello from the scripted model ({marker})"
        usage = Usage(prompt_tokens=1000, completion_tokens=50)
        module_model.add([StreamStep.of(text, size=7, usage=usage)], match=marker)
        client = opencode.client
        async with client.events() as events:
            session = await client.create_session(f"greet {marker}", metadata={"delegation": marker})
            await client.prompt_async(session["id"], f"say hello {marker}")
            seen = await until_idle(events, session["id"])
        mine = [e for e in seen if e.session_id == session["id"]]
        assert not [e for e in seen if e.type in NOISE_EVENT_TYPES]
        assert {"session.status", "message.part.delta", "message.updated", "session.idle"} <= {
            e.type for e in mine
        }
        assert "".join(e.properties["delta"] for e in mine if e.type == "message.part.delta") == text
        expected_cost = ModelCost().dollars(1000, 50)
        done = [
            e.properties["info"]
            for e in mine
            if e.type == "message.updated" and e.properties["info"].get("finish")
        ]
        assert done[-1]["tokens"]["input"] == 1000
        assert done[-1]["tokens"]["output"] == 50
        assert done[-1]["cost"] == pytest.approx(expected_cost)
        reply = last_assistant(await client.messages(session["id"]))
        assert texts(reply) == text
        assert reply["info"]["cost"] == pytest.approx(expected_cost)
        totals = await client.get_session(session["id"])
        assert totals["metadata"] == {"delegation": marker}
        assert totals["title"] == f"greet {marker}"
        assert totals["cost"] == pytest.approx(expected_cost)

    async def test_sync_prompt_returns_the_reply(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """POST /message waits for the turn and returns the assistant's message with cost > 0."""
        module_model.add([TextStep(text="synchronous answer")], match=marker)
        session = await opencode.client.create_session(f"sync {marker}")
        reply = await opencode.client.prompt(session["id"], f"answer {marker}")
        assert texts(reply) == "synchronous answer"
        assert reply["info"]["cost"] > 0
        assert reply["info"]["tokens"]["input"] > 0

    async def test_write_tool_call_creates_the_file(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """A scripted `write` call makes OpenCode write the file, and the model sees the tool's result."""
        target = opencode.workdir / f"{marker}.txt"
        module_model.add(
            [
                ToolCallStep.of("write", {"filePath": str(target), "content": "written by a tool\n"}),
                EchoToolResultStep(prefix="tool said: "),
            ],
            match=marker,
        )
        client = opencode.client
        async with client.events() as events:
            session = await client.create_session(f"write {marker}")
            await client.prompt_async(session["id"], f"write the file {marker}")
            seen = await until_idle(events, session["id"])
        assert target.read_text() == "written by a tool\n"
        statuses = [
            e.properties["part"]["state"]["status"]
            for e in seen
            if e.type == "message.part.updated" and e.properties["part"]["type"] == "tool"
        ]
        assert statuses[0] == "pending"
        assert statuses[-1] == "completed"
        messages = await client.messages(session["id"])
        assert texts(last_assistant(messages)) == "tool said: Wrote file successfully."
        tool_parts = [p for m in messages for p in m["parts"] if p["type"] == "tool"]
        assert tool_parts[0]["tool"] == "write"
        assert tool_parts[0]["state"]["input"]["filePath"] == str(target)

    async def test_permission_asked_is_listed_and_answered(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """A bash call under an 'ask' rule waits for an answer; answering 'once' lets it run."""
        command = f"echo ran-{marker}"
        module_model.add(
            [ToolCallStep.of("bash", {"command": command, "description": "echo"}), EchoToolResultStep()],
            match=marker,
        )
        client = opencode.client
        async with client.events() as events:
            session = await client.create_session(f"perm {marker}")
            await client.prompt_async(session["id"], f"run it {marker}")
            asked = await events.wait_for(
                lambda e: e.type == "permission.asked" and e.session_id == session["id"], 30
            )
            pending = {p["id"]: p for p in await client.permissions()}
            assert asked.properties["id"] in pending
            question = pending[asked.properties["id"]]
            assert question["permission"] == "bash"
            assert question["patterns"] == [command]
            assert question["tool"]["callID"]
            assert (await client.session_status())[session["id"]]["type"] == "busy"
            assert await client.reply_permission(question["id"], "once") is True
            await until_idle(events, session["id"])
        assert question["id"] not in {p["id"] for p in await client.permissions()}
        assert texts(last_assistant(await client.messages(session["id"]))) == f"tool result: ran-{marker}\n"

    async def test_rejected_permission_stops_the_tool(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """Answering 'reject' fails the tool call and the command never runs."""
        target = opencode.workdir / f"{marker}.rejected"
        module_model.add(
            [ToolCallStep.of("bash", {"command": f"touch {target}", "description": "touch"})], match=marker
        )
        client = opencode.client
        async with client.events() as events:
            session = await client.create_session(f"reject {marker}")
            await client.prompt_async(session["id"], f"touch it {marker}")
            asked = await events.wait_for(
                lambda e: e.type == "permission.asked" and e.session_id == session["id"], 30
            )
            await client.reply_permission(asked.properties["id"], "reject")
            await until_idle(events, session["id"])
        tool_parts = [
            p for m in await client.messages(session["id"]) for p in m["parts"] if p["type"] == "tool"
        ]
        assert tool_parts[0]["state"]["status"] == "error"
        assert not target.exists()

    async def test_session_rules_hide_denied_tools(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """A session created with a 'deny' rule for bash does not offer bash to the model."""
        module_model.add([TextStep(text="ok")], match=marker)
        rules = session_permission_rules({"bash": "deny"})
        session = await opencode.client.create_session(f"deny {marker}", permission=rules)
        await opencode.client.prompt(session["id"], f"hello {marker}")
        request = next(r for r in module_model.completions if r.conversation == marker)
        offered = {tool["function"]["name"] for tool in request.body["tools"]}
        assert "write" in offered
        assert "bash" not in offered

    async def test_abort_ends_a_never_ending_reply(
        self, opencode: OpenCodeService, module_model: ScriptedModel, marker: str
    ) -> None:
        """Abort ends a reply that would never end: the model sees the disconnect, the message an error."""
        module_model.add([HangStep(keepalive=0.2)], match=marker)
        client = opencode.client
        async with client.events() as events:
            session = await client.create_session(f"abort {marker}")
            await client.prompt_async(session["id"], f"never finish {marker}")
            await asyncio.to_thread(module_model.wait_for_completions, 1, conversation=marker, timeout=30)
            assert session["id"] in await client.session_status()
            assert await client.abort(session["id"]) is True
            seen = await until_idle(events, session["id"], timeout=10)
        errors = [e for e in seen if e.type == "session.error" and e.session_id == session["id"]]
        assert errors[0].properties["error"]["name"] == "MessageAbortedError"
        assert session["id"] not in await client.session_status()
        reply = last_assistant(await client.messages(session["id"]))
        assert reply["info"]["error"]["name"] == "MessageAbortedError"
        records = await asyncio.to_thread(
            module_model.wait_for_completions, 1, conversation=marker, finished=True, timeout=10
        )
        assert records[0].outcome == "disconnected"


# -- stopping, recycling, and orphans ----------------------------------------------------------


@integration
@module_loop
class TestStop:
    async def test_stop_ends_the_whole_tree(
        self, start_service: Any, scripted_model: ScriptedModel, marker: str, process_table: Any
    ) -> None:
        """Stop ends opencode, its watchdog and even a tool process that runs in a session of its own."""
        scripted_model.add(
            [ToolCallStep.of("bash", {"command": f"sleep 600 && echo {marker}", "description": "wait"})],
            match=marker,
        )
        config = build_agent_config(model_base_url=scripted_model.base_url, permission={"bash": "allow"})
        service = await start_service(config)
        session = await service.client.create_session(f"sleep {marker}")
        await service.client.prompt_async(session["id"], f"sleep {marker}")
        tool_pid = await wait_for_process(process_table, marker)
        info = service.info
        tool_pgid = process_table()[tool_pid][1]
        assert tool_pgid != info.pgid  # OpenCode puts tool commands in a process group of their own
        await service.stop(abort_sessions=False)
        table = process_table()
        assert info.pid not in table
        assert info.pgid not in table
        assert tool_pid not in table
        assert not [pid for pid, (_, pgid, _) in table.items() if pgid in (info.pgid, tool_pgid)]
        assert not service.is_alive()

    async def test_crashed_server_takes_its_tools_along(
        self, start_service: Any, scripted_model: ScriptedModel, marker: str, process_table: Any
    ) -> None:
        """If opencode itself dies, the watchdog still ends its tool processes; start() then recovers."""
        command = f"sleep 600 && echo {marker}"
        scripted_model.add(
            [ToolCallStep.of("bash", {"command": command, "description": "wait"})], match=marker
        )
        config = build_agent_config(model_base_url=scripted_model.base_url, permission={"bash": "allow"})
        service = await start_service(config)
        session = await service.client.create_session(f"crash {marker}")
        await service.client.prompt_async(session["id"], f"sleep {marker}")
        tool_pid = await wait_for_process(process_table, marker)
        crashed = service.info
        os.kill(crashed.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (process_alive(tool_pid) or process_alive(crashed.pgid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not process_alive(tool_pid)
        assert not service.is_alive()
        await service.start()
        assert (await service.health())["healthy"] is True
        assert service.info.pid != crashed.pid

    async def test_stop_aborts_busy_sessions_and_restart_keeps_them(
        self, start_service: Any, scripted_model: ScriptedModel, marker: str
    ) -> None:
        """Stop settles a running reply as aborted; after a restart: new password, same sessions."""
        scripted_model.add([HangStep(keepalive=0.2)], match=marker)
        config = build_agent_config(model_base_url=scripted_model.base_url)
        service = await start_service(config)
        session = await service.client.create_session(f"busy {marker}")
        await service.client.prompt_async(session["id"], f"hang {marker}")
        await asyncio.to_thread(scripted_model.wait_for_completions, 1, conversation=marker, timeout=30)
        old = service.info
        await service.restart()
        assert scripted_model.completions[0].outcome == "disconnected"
        assert service.info.password != old.password
        assert not process_alive(old.pid)
        async with httpx.AsyncClient(base_url=service.url) as stale:
            assert (await stale.get("/global/health", auth=("opencode", old.password))).status_code == 401
        reply = last_assistant(await service.client.messages(session["id"]))
        assert reply["info"]["error"]["name"] == "MessageAbortedError"
        assert reply["info"]["time"]["completed"] > 0


CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path
    from engine.opencode_config import build_agent_config
    from engine.opencode_runner import OpenCodeService
    from engine.scripted_model import ScriptedModel, ToolCallStep

    async def main(root, marker, report):
        model = ScriptedModel().start()
        command = f"sleep 600 && echo {marker}"
        model.add([ToolCallStep.of("bash", {"command": command, "description": "wait"})], match=marker)
        config = build_agent_config(model_base_url=model.base_url, permission={"bash": "allow"})
        service = await OpenCodeService(root / "work", root / "state", config=config).start()
        session = await service.client.create_session("orphan test")
        await service.client.prompt_async(session["id"], f"sleep {marker}")
        report.write_text(json.dumps({"pid": service.info.pid, "pgid": service.info.pgid}))
        await asyncio.sleep(3600)

    root = Path(sys.argv[1])
    (root / "work").mkdir()
    asyncio.run(main(root, sys.argv[2], root / "report.json"))
    """
)


@integration
class TestOrphans:
    def test_kill_9_of_the_engine_leaves_no_orphan(
        self, tmp_path: Path, marker: str, process_table: Callable[[], ProcessTable]
    ) -> None:
        """When the Python process that started a server is killed with -9, server and tools die too."""
        report = tmp_path / "report.json"
        engine = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), marker], stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while not report.exists() and engine.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert report.exists(), (
                engine.stderr.read().decode() if engine.poll() is not None else "no report"
            )
            server = json.loads(report.read_text())
            tool_pid = asyncio.run(wait_for_process(process_table, marker))
            assert process_alive(server["pid"])
        finally:
            engine.send_signal(signal.SIGKILL)
            engine.wait()
            assert engine.stderr is not None
            engine.stderr.close()
        killed = time.monotonic()
        survivors: list[int] = []
        while time.monotonic() - killed < 10:
            table = process_table()
            survivors = [p for p in (server["pid"], server["pgid"], tool_pid) if p in table]
            survivors += [pid for pid, (_, pgid, _) in table.items() if pgid == server["pgid"]]
            if not survivors:
                break
            time.sleep(0.1)
        assert survivors == [], f"orphans left {time.monotonic() - killed:.1f}s after kill -9"
