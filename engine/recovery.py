"""Recovery on start: replay the ledger, then settle every session it still thinks is live.

A session recorded as running is re-attached when its OpenCode server and session are still
alive; otherwise it is recorded as interrupted. A queued session (approved, never started) is
interrupted too. No session stays "running" forever.
"""

from __future__ import annotations

from typing import Any

from engine.backend import AgentBackend
from engine.manager import record
from ledger import Ledger
from schemas.events import LIVE_STATUSES, SessionInterrupted


async def recover(ledger: Ledger, backend: AgentBackend) -> dict[str, Any]:
    """Rebuild drifted projections, then re-attach or interrupt each live session."""
    check = ledger.replay(check=True)
    repaired = False
    if not check.ok:
        ledger.replay()
        repaired = True
    attached: list[tuple[str, Any]] = []
    interrupted: list[str] = []
    for st in ledger.sessions(statuses=LIVE_STATUSES):
        agent = None
        if st.status == "running" and st.server_url and st.opencode_session_id:
            try:
                agent = await backend.attach(st.server_url, st.opencode_session_id, st.pid, st.session_id)
            except Exception:
                agent = None
        if agent is not None:
            attached.append((st.session_id, agent))
            continue
        reason = (
            "the engine restarted before this delegation started"
            if st.status != "running"
            else "the engine restarted and the agent's OpenCode server or session is gone"
        )
        await record(ledger, st.session_id, SessionInterrupted(session_id=st.session_id, reason=reason))
        interrupted.append(st.session_id)
    return {
        "replay_drift": len(check.drift),
        "repaired": repaired,
        "attached": attached,
        "interrupted": interrupted,
    }
