"""Builders and helpers shared by the engine's end-to-end tests (``tests/engine/test_engine_*.py``).

Everything here drives the real thing: an ``Engine`` with its FastMCP server, real ``opencode
serve`` processes, and the scripted model as the only stand-in. Requests are built from the ct_dev
fixture (``tests/fixtures/ct_dev_spawn_request.json``) the way ``cli/demo.py`` builds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import Engine
from engine.scripted_model import ScriptedModel
from engine.settings import EngineSettings
from ledger import Ledger
from schemas.events import TERMINAL_STATUSES

FIXTURE_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "ct_dev_spawn_request.json"
REPO = Path(__file__).resolve().parents[2]


# -- requests ----------------------------------------------------------------------------------


def now_iso(offset_s: float = 0.0) -> str:
    """An RFC 3339 UTC timestamp, ``offset_s`` seconds from now."""
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def fixture_request(project: Path, instructions: str | None = None) -> dict[str, Any]:
    """The ct_dev example request as given, with a real project directory (and our instructions)."""
    request = json.loads(FIXTURE_PATH.read_text(encoding="utf-8"))
    request["project_directory"] = str(project)
    if instructions is not None:
        request["instructions"] = instructions
    return request


def root_request(project: Path, role: str, instructions: str, **context: Any) -> dict[str, Any]:
    """A root delegation (the main agent -> ``role``) built on the fixture; ``context`` overrides
    keys of ``delegation_context`` (``scopes``, ``budget``, ``constraints`` ...)."""
    request = fixture_request(project, instructions)
    request["role"] = role
    dc = request["delegation_context"]
    dc.update(delegated_to=role, delegated_cap=f"{role}: {instructions[:60]}", delegated_at=now_iso())
    dc.update(context)
    return request


def child_request(parent: dict[str, Any], role: str, instructions: str, **context: Any) -> dict[str, Any]:
    """A delegation the agent of ``parent`` makes to ``role``: a proper next hop of the chain
    (delegator = the parent's delegated_to, delegator_cap restates its delegated_cap, constraints
    and scopes carried). The parent's budget and expiry are not copied; pass them in ``context``."""
    child = copy.deepcopy(parent)
    child.update(role=role, instructions=instructions)
    pdc = parent["delegation_context"]
    dc = {k: v for k, v in pdc.items() if k not in ("budget", "expires_at")}
    dc.update(
        delegator=pdc["delegated_to"],
        delegator_cap=pdc["delegated_cap"],
        delegated_to=role,
        delegated_cap=f"{role}: {instructions[:60]}",
        delegated_at=now_iso(),
    )
    dc.update(context)
    child["delegation_context"] = dc
    return child


# -- engines -----------------------------------------------------------------------------------


def engine_settings(base: Path, **overrides: Any) -> EngineSettings:
    """Settings for an isolated engine whose ledger, agents and project all live under ``base``."""
    project = base / "project"
    project.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "db_path": base / "ledger.db",
        "allowed_roots": (str(project),),
        "isolated": True,
        "work_dir": base / "agents",
        "default_timeout_s": 120.0,
        "stop_grace_s": 2.0,
        # no warm pool unless a test asks for one (tests/engine/test_opencode_pool.py): the cold path
        # applies the same per-agent settings at run time, and 2 cores are shared by every test
        "pool_size": 0,
    }
    values.update(overrides)
    return EngineSettings(**values)


@contextlib.asynccontextmanager
async def running_engine(base: Path, model: ScriptedModel, **overrides: Any) -> AsyncIterator[Engine]:
    """An engine started on ``base`` (see ``engine_settings``), stopped on exit."""
    engine = Engine(engine_settings(base, **overrides), model_base_url=model.base_url)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@contextlib.contextmanager
def module_env(keys: Path) -> Iterator[pytest.MonkeyPatch]:
    """Environment for a module-scoped engine: its own signing keys, logfire quiet when unconfigured.

    (The autouse ``keys_dir`` fixture is function-scoped, so it is not in force yet when a module
    fixture opens the ledger.)
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEDGER_KEYS_DIR", str(keys))
        mp.setenv("LOGFIRE_IGNORE_NO_CONFIG", "1")
        yield mp


@pytest.fixture
def quiet_logfire(monkeypatch: pytest.MonkeyPatch) -> None:
    """logfire unconfigured stays silent (pytest turns its warning into an error); import it autouse."""
    monkeypatch.setenv("LOGFIRE_IGNORE_NO_CONFIG", "1")


# -- the ledger --------------------------------------------------------------------------------


def events(
    ledger: Ledger, stream: str | None = None, types: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """``(type, payload)`` of the ledger's entries, in order (of one stream, of some types)."""
    filters: dict[str, Any] = {}
    if stream is not None:
        filters["stream"] = stream
    if types is not None:
        filters["types"] = types
    return [(e.type, e.data() or {}) for e in ledger.entries(**filters)]


def types_of(ledger: Ledger, stream: str) -> list[str]:
    return [t for t, _ in events(ledger, stream)]


def first(ledger: Ledger, stream: str, type_: str) -> dict[str, Any]:
    """The payload of the first ``type_`` event of ``stream`` (AssertionError when there is none)."""
    found = events(ledger, stream, [type_])
    assert found, f"no {type_} on stream {stream}: {types_of(ledger, stream)}"
    return found[0][1]


def verdict(ledger: Ledger, stream: str) -> dict[str, Any]:
    return first(ledger, stream, "gate.decided")["verdict"]


def rules(findings: list[dict[str, Any]]) -> set[str]:
    return {f["rule"] for f in findings}


def recorded_session(error_text: str) -> str:
    """The session id a refusal says it was recorded as."""
    match = re.search(r"recorded as ([0-9a-f-]{36})", error_text)
    assert match, f"the refusal does not name its ledger record: {error_text}"
    return match.group(1)


def sessions_by_role(ledger: Ledger) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in ledger.sessions():
        out.setdefault(s.role, []).append(s.session_id)
    return out


def live_sessions(ledger: Ledger) -> list[str]:
    return [s.session_id for s in ledger.sessions() if s.status not in TERMINAL_STATUSES]


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "the condition", interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_status(ledger: Ledger, session_id: str, statuses: set[str], timeout: float = 60.0) -> str:
    """Wait until the session's projected status is one of ``statuses``; returns it."""

    def current() -> str | None:
        st = ledger.session(session_id)
        return st.status if st is not None and st.status in statuses else None

    return str(await wait_until(current, timeout, f"session {session_id} to be {sorted(statuses)}"))


async def wait_spawned(ledger: Ledger, role: str, timeout: float = 60.0, parent: str | None = None) -> str:
    """The session id of the first agent of ``role`` (under ``parent``) recorded as spawned."""

    def found() -> str | None:
        for _t, data in events(ledger, types=["agent.spawned"]):
            if data["role"] == role and (parent is None or data["parent_session_id"] == parent):
                return str(data["session_id"])
        return None

    return str(await wait_until(found, timeout, f"an agent.spawned of role {role}"))


# -- processes ---------------------------------------------------------------------------------


def opencode_processes(marker: Path | str) -> list[int]:
    """Live processes of an `opencode serve` (or its watchdog) whose command line or environment
    mentions ``marker`` (an engine's work dir: every agent's state lives under it)."""
    needle = str(marker).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            if stat[stat.rfind(b")") + 2 :].split()[0] == b"Z":
                continue
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            if b"opencode" not in cmdline:
                continue
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append(int(name))
    return sorted(found)


async def wait_no_opencode(marker: Path | str, timeout: float = 20.0) -> None:
    await wait_until(
        lambda: not opencode_processes(marker),
        timeout,
        f"every opencode process under {marker} to end (left: {opencode_processes(marker)})",
    )
