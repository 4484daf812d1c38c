"""A ledger that cannot write (the disk is full) while an agent runs: no work goes on unrecorded,
callers are told why, nothing recorded is lost, and the end is recorded once the ledger can write.

The disk is filled the way SQLite sees a full disk: the file may not grow by one more page
(``PRAGMA max_page_count`` on the engine's own writer connection, then the pages' free room used
up), so every append fails with SQLITE_FULL until the limit is lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import (
    opencode_processes,
    quiet_logfire,  # noqa: F401 - a fixture
    root_request,
    running_engine,
    types_of,
    wait_status,
    wait_until,
)
from fastmcp import Client
from fastmcp.exceptions import ToolError

from engine.scripted_model import ScriptedModel, TextStep, ToolCallStep
from ledger import Ledger, StorageFull
from schemas.events import OperatorNote

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("quiet_logfire")]


@contextlib.contextmanager
def disk_full(led: Ledger) -> Iterator[None]:
    """Every append to ``led`` fails as on a full disk while inside (lifted on the way out)."""
    writer = led._writer
    with writer._conn_lock:
        pages = writer.conn.execute("PRAGMA page_count").fetchone()[0]
        writer.conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        size = 4000
        for _ in range(100_000):  # the room left in the pages too, down to the smallest note
            try:
                led.append("filler", OperatorNote(text="y" * size, by="test"))
            except StorageFull:
                if size == 1:
                    break
                size = max(1, size // 4)
        with pytest.raises(StorageFull):
            led.append("filler", OperatorNote(text="x", by="test"))
        yield
    finally:
        with writer._conn_lock:
            writer.conn.execute("PRAGMA max_page_count = 1073741823")


async def test_an_agent_whose_work_cannot_be_recorded_is_stopped_and_its_end_recorded_later(
    tmp_path: Path, scripted_model: ScriptedModel, marker: str
) -> None:
    """The disk fills while an agent works: its next tool call cannot be recorded, so the agent is
    stopped at once (its server gone: nothing it does goes unrecorded); a wait says why instead of
    "done" on a session the ledger shows running, and `query_session` shows the end not yet
    recorded; a new delegation is refused with the storage error and starts nothing. Once the disk
    has room again, the engine records the end by itself; the chain verifies."""
    scripted_model.add(
        [
            ToolCallStep.of("bash", {"command": "echo " + "x" * 7000, "description": "print"}, delay=2.0),
            TextStep(text=f"{marker} done"),
        ],
        match=marker,
    )
    project = tmp_path / "project"
    async with asyncio.timeout(120), running_engine(tmp_path, scripted_model) as engine:
        led, manager = engine.ledger, engine.service.manager  # type: ignore[union-attr]
        assert led is not None
        async with Client(engine.mcp) as c:
            request = root_request(project, "tester", f"{marker} go")
            sid = (await c.call_tool("spawn_agent", request)).data["session_id"]
            await wait_status(led, sid, {"running"})
            pid = led.session(sid).pid  # type: ignore[union-attr]
            before = types_of(led, sid)
            with disk_full(led):
                with pytest.raises(ToolError, match="the ledger could not record it") as waited:
                    await c.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 30})
                assert "StorageFull" in str(waited.value)
                assert "disk is full" in str(waited.value)
                assert not Path(f"/proc/{pid}").exists()
                assert not manager.supervises(sid)
                assert types_of(led, sid) == before  # nothing could be recorded
                state = (await c.call_tool("query_session", {"session_id": sid})).data
                assert state["status"] == "running"
                assert state["unrecorded_end"]["type"] == "agent.failed"
                agents_before = opencode_processes(tmp_path / "agents")
                with pytest.raises(ToolError, match="disk is full or failing"):
                    await c.call_tool("spawn_agent", root_request(project, "tester", f"{marker} again"))
                assert opencode_processes(tmp_path / "agents") == agents_before
            await wait_until(lambda: not manager.unrecorded, 10, "the end to be recorded")
            st = led.session(sid)
            assert st is not None
            assert st.status == "failed"
            assert st.end_reason is not None
            assert "StorageFull" in st.end_reason
            assert types_of(led, sid) == [*before, "agent.failed"]
            waited_again = (
                await c.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 5})
            ).data
            assert waited_again["status"] == "failed"
            assert led.verify().ok
            assert led.replay(check=True).ok
    assert opencode_processes(tmp_path / "agents") == []
