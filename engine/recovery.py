"""Recovery on start: replay the ledger, then settle every session it still thinks is live.

A session recorded as running is re-attached when its OpenCode server and session are still
alive (the server then outlived its watchdog, which normally ends it with the engine); otherwise
it is recorded as interrupted. A queued session (approved, never started) is interrupted too. No
session stays "running" forever. Sessions of another engine that still runs on the same ledger
(two MCP clients, each with its own `ledger serve`) are left to it; an engine that runs settles
those of one that dies the same way (``settle``, through `other_engines.Orphans`). Re-attaching is
recorded as ``session.adopted``; every record here is conditional (the session still live and
still its dead engine's), so of several engines that settle at once exactly one does. A re-attached
agent reaches this engine's MCP server with a new token, and what it did while no engine listened
is recorded once, when the engine catches up. Servers left by sessions that ended meanwhile are stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from engine._watchdog import process_alive
from engine.backend import AgentBackend
from engine.manager import record
from engine.owner import runs_elsewhere
from ledger import Conflict, Ledger
from schemas.events import LIVE_STATUSES, TERMINAL_STATUSES, SessionAdopted, SessionInterrupted
from schemas.state import SessionState


def recorded(ledger: Ledger, session_id: str) -> tuple[set[str], set[str]]:
    """The tool call ids and message ids the ledger holds for the session already."""
    calls: set[str] = set()
    messages: set[str] = set()
    for entry in ledger.entries(stream=session_id, types=["tool.called", "output.received"]):
        data = entry.data()
        if data is None:  # pruned
            continue
        if entry.type == "tool.called" and data.get("call_id"):
            calls.add(str(data["call_id"]))
        elif entry.type == "output.received" and data.get("message_id"):
            messages.add(str(data["message_id"]))
    return calls, messages


def _still_theirs(engine: str | None) -> Callable[[SessionState | None], str | None]:
    """The condition of settling a session of a stopped engine: it is live and still that engine's
    (another engine may have adopted or ended it meanwhile)."""

    def check(st: SessionState | None) -> str | None:
        if st is None or st.status in TERMINAL_STATUSES:
            return "it has ended meanwhile"
        if st.engine != engine:
            return f"another engine has adopted it ({st.engine})"
        return None

    return check


async def settle(
    ledger: Ledger,
    backend: AgentBackend,
    st: SessionState,
    *,
    engine_id: str | None,
    mcp_url: str | None,
    why: str,
) -> tuple[str, Any]:
    """Settle a live session whose engine is gone: ``("reattached", agent)`` when its server and
    OpenCode session are alive (adopted first: ``session.adopted``), else ``("interrupted", None)``
    (recorded as ``session.interrupted``, with ``why`` the engine is gone); ``("taken", None)`` when
    another engine adopted or ended it first (each record is conditional, so of several engines that
    settle it at once exactly one does)."""
    previous = st.engine
    if (
        st.status == "running"
        and st.server_url
        and st.opencode_session_id
        and engine_id is not None
        and st.pid is not None
        and process_alive(st.pid)  # else its server is gone for sure: no adoption to record
    ):
        adoption = SessionAdopted(
            session_id=st.session_id, engine=engine_id, previous_engine=previous, reason=why
        )
        try:
            await ledger.append_if_async(st.session_id, adoption, _still_theirs(previous))
        except Conflict:
            return "taken", None
        previous = engine_id  # ours from here on: what follows is conditional on that
        agent = None
        with contextlib.suppress(Exception):
            calls, messages = recorded(ledger, st.session_id)
            agent = await backend.attach(
                st.server_url,
                st.opencode_session_id,
                st.pid,
                st.session_id,
                mcp_url=mcp_url,
                recorded_calls=calls,
                recorded_messages=messages,
            )
        if agent is not None:
            return "reattached", agent
    reason = (
        f"{why} before this delegation started"
        if st.status != "running"
        else f"{why} and the agent's OpenCode server or session is gone"
    )
    try:
        await ledger.append_if_async(
            st.session_id,
            SessionInterrupted(session_id=st.session_id, reason=reason),
            _still_theirs(previous),
        )
    except Conflict:
        return "taken", None
    return "interrupted", None


async def recover(
    ledger: Ledger, backend: AgentBackend, *, mcp_url: str | None = None, engine_id: str | None = None
) -> dict[str, Any]:
    """Rebuild drifted projections, then re-attach or interrupt each live session whose engine is gone;
    those of another engine that still runs (``engine/owner.py``) are left to it (``mcp_url``: this
    engine's MCP server, for re-attached agents; ``engine_id``: this engine)."""
    check = ledger.replay(check=True)
    repaired = False
    if not check.ok:
        ledger.replay()
        repaired = True
    attached: list[tuple[str, Any]] = []
    interrupted: list[str] = []
    others: list[str] = []
    for st in ledger.sessions(statuses=LIVE_STATUSES):
        if runs_elsewhere(st.engine, engine_id):
            others.append(st.session_id)
            continue
        how, agent = await settle(
            ledger, backend, st, engine_id=engine_id, mcp_url=mcp_url, why="the engine restarted"
        )
        if how == "reattached":
            attached.append((st.session_id, agent))
        elif how == "interrupted":
            interrupted.append(st.session_id)
        else:
            others.append(st.session_id)  # another engine, starting or running, settled it first
    stopped = await _stop_leftovers(ledger, backend, engine_id, {sid for sid, _ in attached})
    return {
        "leftover_servers_stopped": stopped,
        "replay_drift": len(check.drift),
        "repaired": repaired,
        "attached": attached,
        "reattached": [sid for sid, _ in attached],
        "interrupted": interrupted,
        "left_to_their_engine": others,
    }


async def supervise_again(ledger: Ledger, result: dict[str, Any], adopt: Callable[[str, Any], None]) -> None:
    """Hand each re-attached agent of ``result`` (``recover``'s) to ``adopt``; an agent that cannot be
    supervised again is stopped and recorded as interrupted, the others go on."""
    for sid, agent in result.pop("attached", []):
        if not await hand_over(ledger, sid, agent, adopt, "the engine restarted"):
            result["reattached"].remove(sid)
            result["interrupted"].append(sid)


async def hand_over(
    ledger: Ledger, sid: str, agent: Any, adopt: Callable[[str, Any], None], why: str
) -> bool:
    """Hand a re-attached agent to ``adopt`` (True); if it cannot be supervised again, stop it and
    record the session as interrupted (False)."""
    try:
        adopt(sid, agent)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await agent.close()
        reason = f"{why} and could not supervise the agent again ({type(exc).__name__}: {exc})"
        await record(ledger, sid, SessionInterrupted(session_id=sid, reason=reason))
        return False
    return True


async def _stop_leftovers(
    ledger: Ledger, backend: AgentBackend, engine_id: str | None, attached: set[str]
) -> list[str]:
    """Servers of sessions that ended (the ledger says so) while no engine could stop them, e.g.
    revoked while their engine and watchdog were dead: stopped. Those of a live engine, and the ones
    just re-attached, are not touched. Returns the sessions whose server was stopped."""
    stopped = []
    for sid in backend.leftovers():
        st = ledger.session(sid)
        if sid in attached or (st is not None and st.status not in TERMINAL_STATUSES):
            continue  # live: re-attached, or settled above
        if st is not None and runs_elsewhere(st.engine, engine_id):
            continue  # its engine runs: it stops the server itself
        with contextlib.suppress(Exception):
            if await backend.stop_leftover(sid):
                stopped.append(sid)
    return stopped


def summary(result: dict[str, Any]) -> str | None:
    """One line for the operator about what ``recover`` settled; None when there was nothing to do."""
    parts = []
    if result.get("reattached"):
        parts.append(f"{len(result['reattached'])} running agent(s) re-attached")
    if result.get("interrupted"):
        parts.append(f"{len(result['interrupted'])} session(s) recorded as interrupted")
    if result.get("leftover_servers_stopped"):
        parts.append(
            f"{len(result['leftover_servers_stopped'])} leftover server(s) of ended sessions stopped"
        )
    if result.get("left_to_their_engine"):
        parts.append(
            f"{len(result['left_to_their_engine'])} session(s) left to the engine that still runs them"
        )
    if result.get("repaired"):
        parts.append(f"session projections rebuilt from the ledger ({result.get('replay_drift', 0)} drifted)")
    return "recovery after a restart: " + "; ".join(parts) if parts else None
