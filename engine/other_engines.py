"""Sessions of other engines that share the ledger (engine/owner.py): who runs a session, waiting for
one through the ledger, and revocations recorded by any engine taking effect on this one's agents."""

from __future__ import annotations

import asyncio
import contextlib
import time

from engine.manager import AgentManager
from engine.owner import engine_alive, engine_pid, runs_elsewhere
from engine.refusals import OtherEngineGone
from ledger import Ledger
from schemas.events import TERMINAL_STATUSES
from schemas.state import SessionState

#: how often the ledger is read for new revocations, and for the end of another engine's session
POLL_S = 0.25


def other_engine(st: SessionState, engine_id: str | None) -> str | None:
    """A description of the other, still running engine that runs ``st``; None when it is this one's,
    ended, or its engine is gone."""
    if st.status in TERMINAL_STATUSES or not runs_elsewhere(st.engine, engine_id):
        return None
    return f"the engine of process {engine_pid(st.engine or '')} ({st.engine})"


async def wait_on_ledger(ledger: Ledger, session_id: str, timeout: float | None) -> bool:
    """Wait until the ledger shows the session ended (another engine records it); False on timeout.
    OtherEngineGone when that engine stops without recording the end (it died)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        st = ledger.session(session_id)
        if st is None or st.status in TERMINAL_STATUSES:
            return True
        if st.engine is not None and not engine_alive(st.engine):
            raise OtherEngineGone(
                f"the engine that ran session {session_id} (process {engine_pid(st.engine)}) stopped "
                f"without recording its end ({st.status}); the next start of `ledger serve` on this "
                "ledger settles it (re-attached, or recorded as interrupted)"
            )
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(
            POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
        )


async def follow_revocations(ledger: Ledger, manager: AgentManager) -> None:
    """Stop this engine's agents in every subtree revoked from now on, whichever engine recorded it."""
    last = ledger.head().size
    while True:
        await asyncio.sleep(POLL_S)
        head = ledger.head().size  # entries up to here are read now; later ones on the next round
        if head <= last:
            continue
        for entry in ledger.entries(start=last + 1, stop=head, types=["delegation.revoked"]):
            data = entry.data() or {}
            reason, by = f"revoked: {data.get('reason', '')}", str(data.get("by") or "delegator")
            for sid in [str(data.get("session_id")), *map(str, data.get("subtree") or ())]:
                if manager.supervises(sid):
                    with contextlib.suppress(Exception):
                        await manager.stop(sid, reason, by)
        last = head
