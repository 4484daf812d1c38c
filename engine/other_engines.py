"""Sessions of other engines that share the ledger (engine/owner.py): who runs a session, waiting for
one through the ledger, revocations recorded by any engine taking effect on this one's agents, and
the sessions of an engine that stopped without recording their end, settled by the engines that
still run (`Orphans`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import logfire

from engine.backend import AgentBackend
from engine.manager import AgentManager
from engine.owner import engine_alive, engine_pid, runs_elsewhere
from engine.recovery import hand_over, settle
from engine.refusals import OtherEngineGone
from ledger import Ledger
from schemas.events import LIVE_STATUSES, TERMINAL_STATUSES
from schemas.state import SessionState

#: how often the ledger is read for new revocations, and for the end of another engine's session
POLL_S = 0.25
#: how often the live sessions of the ledger are looked at for an engine that stopped
ORPHANS_POLL_S = 1.0


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
                f"without recording its end ({st.status}); an engine that runs on this ledger settles "
                "it (re-attached, or recorded as interrupted), as does the next start of `ledger serve`"
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
        try:  # a failed read (the file busy, unreadable for a moment) is tried again next round
            head = ledger.head().size  # entries up to here are read now; later ones on the next round
            revoked = (
                []
                if head <= last
                else list(ledger.entries(start=last + 1, stop=head, types=["delegation.revoked"]))
            )
        except Exception as exc:
            logfire.warn("could not read the ledger for revocations: {error}", error=repr(exc))
            continue
        for entry in revoked:
            data = entry.data() or {}
            reason, by = f"revoked: {data.get('reason', '')}", str(data.get("by") or "delegator")
            for sid in [str(data.get("session_id")), *map(str, data.get("subtree") or ())]:
                if manager.supervises(sid):
                    with contextlib.suppress(Exception):
                        await manager.stop(sid, reason, by)
        last = max(last, head)


class Orphans:
    """Live sessions whose engine stopped without recording their end (killed, crashed) while this
    engine runs: settled at once, as a restart would settle them (``recovery.settle``): re-attached
    and supervised here when their agent's server outlived its engine and watchdog, else recorded
    as interrupted; of several engines that notice, exactly one settles each session."""

    def __init__(
        self,
        ledger: Ledger,
        backend: AgentBackend,
        manager: AgentManager,
        *,
        engine_id: str,
        mcp_url: str | None,
        adopt: Callable[[str, Any], None],
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger, self.backend, self.manager = ledger, backend, manager
        self.engine_id, self.mcp_url, self.adopt, self.notify = engine_id, mcp_url, adopt, notify
        self._lock = asyncio.Lock()  # one settling at a time: the follower's and a waiter's
        #: what was settled here, by session: "reattached", "interrupted" or "taken" (by another engine)
        self.settled: dict[str, str] = {}

    def _orphaned(self, st: SessionState | None, alive: dict[str, bool]) -> bool:
        if st is None or st.status in TERMINAL_STATUSES or st.engine in (None, self.engine_id):
            return False  # an engine-less session (recorded before engine ids) waits for a restart
        if st.engine not in alive:
            alive[st.engine] = engine_alive(st.engine)
        return not alive[st.engine] and not self.manager.supervises(st.session_id)

    async def settle(self, session_id: str) -> str | None:
        """Settle the session if its engine is gone; how (see ``settled``), or None if it was not."""
        async with self._lock:
            st = self.ledger.session(session_id)
            if not self._orphaned(st, {}):
                return None
            assert st is not None
            why = f"its engine (process {engine_pid(st.engine or '')}) stopped without recording its end"
            how, agent = await settle(
                self.ledger, self.backend, st, engine_id=self.engine_id, mcp_url=self.mcp_url, why=why
            )
            if how == "reattached" and not await hand_over(self.ledger, session_id, agent, self.adopt, why):
                how = "interrupted"
            if how == "interrupted":  # its folder (credentials, OpenCode state) is tidied, its server stopped
                with contextlib.suppress(Exception):
                    await self.backend.stop_leftover(session_id)
            self.settled[session_id] = how
            if how != "taken":
                told = f"session {session_id} of the engine of process {engine_pid(st.engine or '')}, which "
                told += (
                    f"stopped without recording its end: {'re-attached here' if how == 'reattached' else how}"
                )
                logfire.warn(told)
                if self.notify is not None:
                    self.notify(told)
            return how

    async def follow(self) -> None:
        """Every ORPHANS_POLL_S: settle the live sessions of engines that stopped."""
        while True:
            await asyncio.sleep(ORPHANS_POLL_S)
            alive: dict[str, bool] = {}
            try:
                live = self.ledger.sessions(statuses=LIVE_STATUSES)
            except Exception as exc:  # tried again on the next round
                logfire.warn("could not read the ledger's live sessions: {error}", error=repr(exc))
                continue
            for st in live:
                if self._orphaned(st, alive):
                    with contextlib.suppress(Exception):  # tried again on the next round
                        await self.settle(st.session_id)
