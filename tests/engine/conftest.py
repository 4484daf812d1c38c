"""Fixtures for the engine's bottom layer: scripted models and real `opencode serve` processes.

Servers run in isolated mode: every file they write lives under pytest's temporary folders, and
OpenCode's own npm install runs offline against an empty cache, so tests download nothing.
Async fixtures that hold a server use the module's event loop (``loop_scope="module"``); test
modules using them mark their async tests ``pytest.mark.asyncio(loop_scope="module")``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.opencode_config import build_agent_config
from engine.opencode_runner import OpenCodeService, find_opencode_binary
from engine.scripted_model import ScriptedModel

StartService = Callable[..., Awaitable[OpenCodeService]]


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    """A fresh scripted model server for one test."""
    with ScriptedModel() as model:
        yield model


@pytest.fixture
def marker() -> str:
    """A conversation marker no other test uses."""
    return f"MARK-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def opencode_binary() -> Path:
    """The pinned opencode binary; fails with set-up advice when it is not installed."""
    return find_opencode_binary()


@pytest.fixture(scope="module")
def module_model() -> Iterator[ScriptedModel]:
    """One scripted model for a whole test module (tests keep apart by their markers)."""
    with ScriptedModel() as model:
        yield model


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def opencode(
    module_model: ScriptedModel, tmp_path_factory: pytest.TempPathFactory, opencode_binary: Path
) -> AsyncIterator[OpenCodeService]:
    """One isolated `opencode serve` for a module, on the module's scripted model; bash asks."""
    root = tmp_path_factory.mktemp("opencode")
    (root / "work").mkdir()
    config = build_agent_config(model_base_url=module_model.base_url, permission={"bash": "ask"})
    service = OpenCodeService(root / "work", root / "state", config=config, binary=opencode_binary)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def start_service(tmp_path: Path, opencode_binary: Path) -> AsyncIterator[StartService]:
    """Start extra servers for one test (``await start_service(config, **options)``); all stop after it."""
    started: list[OpenCodeService] = []

    async def start(config: Mapping[str, Any] | None, **options: Any) -> OpenCodeService:
        n = len(started)
        workdir = tmp_path / f"work{n}"
        workdir.mkdir(exist_ok=True)
        options.setdefault("binary", opencode_binary)
        service = OpenCodeService(workdir, tmp_path / f"state{n}", config=config, **options)
        started.append(service)
        return await service.start()

    yield start
    for service in started:
        await service.stop()


ProcessTable = dict[int, tuple[int, int, str]]


@pytest.fixture
def process_table() -> Callable[[], ProcessTable]:
    """A function listing ``{pid: (ppid, pgid, command line)}`` of live processes, from /proc."""
    return _process_table


def _process_table() -> ProcessTable:
    table: ProcessTable = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z":
            table[int(name)] = (int(fields[1]), int(fields[2]), cmdline)
    return table
