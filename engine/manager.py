"""The agent manager: slots, a FIFO queue, supervision of each agent, limits, statistics.

A semaphore bounds the agents that run at once (default 5); past it, delegations wait in FIFO
order. A parent that waits for its child gives its slot back while it waits (`lend_slot`), so
nested waiting never deadlocks the pool. Each agent is supervised by one task that starts it,
sends the instructions, follows its events onto the ledger, enforces its timeout and budgets
(its own and every ancestor's), and always ends with exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import logfire

from engine.backend import (
    AgentBackend,
    AgentSpec,
    Failure,
    Idle,
    Output,
    PermissionAsk,
    RunningAgent,
    ToolUse,
)
from engine.permissions import PermissionPolicy
from ledger import Ledger, LedgerError
from schemas.events import (
    TERMINAL_STATUSES,
    AgentCompleted,
    AgentFailed,
    AgentSpawned,
    AgentStopped,
    BudgetExceeded,
    OutputReceived,
    PermissionDecided,
    ToolCalled,
)


async def record(ledger: Ledger, stream: str, event: Any) -> Any:
    """Append one event to the ledger: the engine's append edge, in its own logfire span."""
    with logfire.span("ledger.append {event_type}", event_type=getattr(event, "type", "?"), stream=stream):
        return await ledger.append_async(stream, event)


@dataclass
class Supervised:
    """One agent under supervision."""

    session_id: str
    spec: AgentSpec
    policy: PermissionPolicy
    spawned: AgentSpawned
    timeout_s: float
    agent: RunningAgent | None = None
    task: asyncio.Task[None] | None = None
    holds_slot: bool = False
    lent: int = 0
    stop_reason: tuple[str, str | None] | None = None  # (reason, by)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    outputs: list[str] = field(default_factory=list)
    #: seconds of its timeout the agent had used before a restart of the engine (re-attached agents)
    used_s: float = 0.0


@dataclass
class Stats:
    completed: int = 0
    failed: int = 0
    stopped: int = 0
    spawn_seconds_total: float = 0.0
    spawns: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


class AgentManager:
    def __init__(
        self,
        ledger: Ledger,
        backend: AgentBackend,
        *,
        max_concurrent: int = 5,
        on_finished: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1 (got {max_concurrent})")
        self.ledger = ledger
        self.backend = backend
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._agents: dict[str, Supervised] = {}
        self.stats = Stats()
        self._on_finished = on_finished
        self._closing = False
        #: seconds without an event after which the agent's server is probed
        self.stall_probe_s = 15.0
        #: ends the ledger could not record (disk full): (event, why), retried until it can
        self.unrecorded: dict[str, tuple[Any, str]] = {}
        self._retrying: asyncio.Task[None] | None = None
        #: seconds between two attempts to record them
        self.retry_s = 1.0

    # -- queries -------------------------------------------------------------------------------
    def get(self, session_id: str) -> Supervised | None:
        return self._agents.get(session_id)

    def running(self) -> list[Supervised]:
        return [s for s in self._agents.values() if s.holds_slot]

    def queued(self) -> list[Supervised]:
        return [s for s in self._agents.values() if not s.done.is_set() and s.started_at is None]

    def statistics(self) -> dict[str, Any]:
        st = self.stats
        return {
            "max_concurrent": self.max_concurrent,
            "running": sum(
                1 for s in self._agents.values() if s.started_at is not None and not s.done.is_set()
            ),
            "holding_slots": len(self.running()),
            "queued": len(self.queued()),
            "completed": st.completed,
            "failed": st.failed,
            "stopped": st.stopped,
            "mean_spawn_ms": round(st.spawn_seconds_total / st.spawns * 1000, 1) if st.spawns else None,
            "tokens": st.tokens,
            "cost_usd": round(st.cost_usd, 6),
        }

    async def health(self, session_id: str) -> dict[str, Any]:
        sup = self._agents.get(session_id)
        if sup is None or sup.agent is None:
            return {"session_id": session_id, "alive": False, "supervised": sup is not None}
        return {
            "session_id": session_id,
            "alive": await sup.agent.alive(),
            "supervised": True,
            "server_url": sup.agent.server_url,
            "pid": sup.agent.pid,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def submit(self, sup: Supervised) -> None:
        """Queue an approved delegation; its supervisor starts it when a slot is free."""
        self._agents[sup.session_id] = sup
        sup.task = asyncio.create_task(self._supervise(sup), name=f"agent-{sup.session_id}")

    def adopt(self, sup: Supervised, agent: RunningAgent) -> None:
        """Re-attach a recovered agent (already started before a restart)."""
        sup.agent = agent
        self._agents[sup.session_id] = sup
        sup.task = asyncio.create_task(self._supervise(sup, attached=True), name=f"agent-{sup.session_id}")

    async def wait(self, session_id: str, timeout: float | None) -> bool:
        sup = self._agents.get(session_id)
        if sup is None:
            return True
        try:
            await asyncio.wait_for(sup.done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def lend_slot(self, session_id: str | None) -> AsyncIterator[None]:
        """While a parent waits for its children, its slot serves them (no nested deadlock)."""
        sup = self._agents.get(session_id) if session_id else None
        if sup is None or not sup.holds_slot:
            yield
            return
        sup.lent += 1
        if sup.lent == 1:
            sup.holds_slot = False
            self._slots.release()
        try:
            yield
        finally:
            sup.lent -= 1
            if sup.lent == 0 and not sup.done.is_set():
                await self._slots.acquire()
                sup.holds_slot = True

    def can_send(self, session_id: str) -> bool:
        """Whether the session's agent runs here now (started, not ended): it can take a message."""
        sup = self._agents.get(session_id)
        return sup is not None and sup.agent is not None and not sup.done.is_set()

    def supervises(self, session_id: str) -> bool:
        """Whether this manager runs (or queues) the session now."""
        sup = self._agents.get(session_id)
        return sup is not None and not sup.done.is_set()

    async def stop(self, session_id: str, reason: str, by: str | None) -> bool:
        sup = self._agents.get(session_id)
        if sup is None or sup.done.is_set():
            return False
        if sup.stop_reason is None:  # once: a second cancel would cut short the first one's clean-up
            sup.stop_reason = (reason, by)
            if sup.task is not None:
                sup.task.cancel()
        await sup.done.wait()
        return True

    async def send(self, session_id: str, text: str) -> None:
        sup = self._agents.get(session_id)
        if sup is None or sup.agent is None:
            raise RuntimeError(f"session {session_id} has no running agent")
        await sup.agent.prompt(text)

    async def shutdown(self, reason: str = "engine shutdown") -> None:
        self._closing = True
        await asyncio.gather(
            *(
                self.stop(sid, reason, "engine")
                for sid, s in list(self._agents.items())
                if not s.done.is_set()
            ),
            return_exceptions=True,
        )
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(BaseException):
                await self._retrying
        with contextlib.suppress(Exception):  # a last try; what is left, the next start interrupts
            await self.record_unrecorded()

    # -- supervision -------------------------------------------------------------------------------
    async def _supervise(self, sup: Supervised, attached: bool = False) -> None:
        led = self.ledger
        sid = sup.session_id
        terminal: Any = None
        try:
            await self._slots.acquire()
            sup.holds_slot = True
            sup.started_at = time.monotonic()
            if not attached:
                t0 = time.monotonic()
                with logfire.span("agent.start {role}", role=sup.spec.role, delegation_id=sid):
                    sup.agent = await self.backend.start(sup.spec)
                self.stats.spawn_seconds_total += time.monotonic() - t0
                self.stats.spawns += 1
                spawned = sup.spawned.model_copy(
                    update={
                        "opencode_session_id": sup.agent.opencode_session_id,
                        "server_url": sup.agent.server_url,
                        "pid": sup.agent.pid,
                    }
                )
                await record(led, sid, spawned)
                await sup.agent.prompt(sup.spec.prompt)
            async with asyncio.timeout(max(0.0, sup.timeout_s - sup.used_s)):
                terminal = await self._follow(sup)
        except asyncio.CancelledError:
            reason, by = sup.stop_reason or ("cancelled", None)
            terminal = AgentStopped(session_id=sid, reason=reason, by=by)
        except TimeoutError:
            terminal = AgentFailed(
                session_id=sid, error=f"no completion within the {sup.timeout_s:g} s timeout", kind="timeout"
            )
        except Exception as exc:  # the agent could not be started or its stream broke
            terminal = AgentFailed(session_id=sid, error=f"{type(exc).__name__}: {exc}", kind="error")
        finally:
            await self._finish(sup, terminal)

    async def _finish(self, sup: Supervised, terminal: Any) -> None:
        sid = sup.session_id
        try:
            if sup.agent is not None:
                if not isinstance(terminal, AgentCompleted):
                    with contextlib.suppress(Exception):
                        await asyncio.shield(sup.agent.abort())
                with contextlib.suppress(Exception):
                    await asyncio.shield(sup.agent.close())
            state = self.ledger.session(sid)
            if terminal is not None and (state is None or state.status not in TERMINAL_STATUSES):
                try:
                    await asyncio.shield(record(self.ledger, sid, terminal))
                except LedgerError as exc:  # kept, and recorded once the ledger can write again
                    self._unrecorded(sid, terminal, exc)
            if isinstance(terminal, AgentCompleted):
                self.stats.completed += 1
            elif isinstance(terminal, AgentStopped):
                self.stats.stopped += 1
            else:
                self.stats.failed += 1
        finally:
            if sup.holds_slot:
                sup.holds_slot = False
                self._slots.release()
            sup.done.set()
            if self._on_finished is not None:
                with contextlib.suppress(Exception):
                    await self._on_finished(sid)

    def _unrecorded(self, sid: str, terminal: Any, exc: LedgerError) -> None:
        why = f"{type(exc).__name__}: {exc}"
        self.unrecorded[sid] = (terminal, why)
        logfire.warn("the end of {session_id} could not be recorded: {why}", session_id=sid, why=why)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry(), name="ledger-retry")

    async def _retry(self) -> None:
        while self.unrecorded:
            await asyncio.sleep(self.retry_s)
            await self.record_unrecorded()

    async def record_unrecorded(self) -> bool:
        """Record the ends kept while the ledger could not write, in order; True when none is left."""
        for sid, (terminal, _why) in list(self.unrecorded.items()):
            state = self.ledger.session(sid)
            if state is None or state.status not in TERMINAL_STATUSES:
                try:
                    await record(self.ledger, sid, terminal)
                except LedgerError:
                    return False  # still full: the next round tries again
            del self.unrecorded[sid]
        return True

    async def _follow(self, sup: Supervised) -> Any:
        """Record the agent's events until its turn ends; return the terminal event to record."""
        assert sup.agent is not None
        led = self.ledger
        sid = sup.session_id
        async for ev in self._watched(sup):
            if isinstance(ev, ToolUse):
                if ev.status in ("completed", "error"):
                    await record(
                        led,
                        sid,
                        ToolCalled(
                            session_id=sid,
                            tool=ev.tool,
                            call_id=ev.call_id,
                            status=ev.status,  # type: ignore[arg-type]
                            input=ev.input,
                            output=(ev.output or "")[:8000] or None,
                            error=ev.error,
                        ),
                    )
            elif isinstance(ev, PermissionAsk):
                reply, reason = sup.policy.decide(ev.permission, ev.patterns)
                await sup.agent.reply_permission(ev.id, reply)
                await record(
                    led,
                    sid,
                    PermissionDecided(
                        session_id=sid,
                        permission_id=ev.id,
                        permission=ev.permission,
                        patterns=ev.patterns,
                        reply=reply,
                        reason=reason,
                    ),
                )
            elif isinstance(ev, Output):
                if ev.text or ev.tokens.total or ev.cost_usd:
                    sup.outputs.append(ev.text)
                    await record(
                        led,
                        sid,
                        OutputReceived(
                            session_id=sid,
                            message_id=ev.message_id,
                            text=ev.text,
                            tokens=ev.tokens,
                            cost_usd=max(0.0, ev.cost_usd),
                        ),
                    )
                    self.stats.tokens += ev.tokens.total
                    self.stats.cost_usd += ev.cost_usd
                    over = self._over_budget(sid)
                    if over is not None:
                        await record(led, sid, over)
                        return AgentFailed(
                            session_id=sid,
                            kind="budget",
                            error=f"budget exceeded: {over.limit} used {over.used:g} of "
                            f"{over.allowed:g} (charged to {over.charged_to})",
                        )
                if ev.error:
                    return AgentFailed(session_id=sid, error=ev.error, kind="error")
            elif isinstance(ev, Failure):
                if ev.aborted and sup.stop_reason is not None:
                    return AgentStopped(session_id=sid, reason=sup.stop_reason[0], by=sup.stop_reason[1])
                return AgentFailed(session_id=sid, error=ev.message, kind="error")
            elif isinstance(ev, Idle):
                summary = sup.outputs[-1][:2000] if sup.outputs else None
                return AgentCompleted(session_id=sid, summary=summary)
        return AgentFailed(
            session_id=sid, error="the agent's event stream ended without completion", kind="crash"
        )

    async def _watched(self, sup: Supervised) -> AsyncIterator[Any]:
        """The agent's events; when none comes for `stall_probe_s`, its server is probed, and a dead
        server ends the stream (the agent is then recorded as crashed instead of waiting for its timeout)."""
        assert sup.agent is not None
        events = sup.agent.events().__aiter__()
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=self.stall_probe_s)
                if not done:  # the same request for the next event stays pending: nothing is lost
                    if not await sup.agent.alive():
                        yield Failure(message="the agent's OpenCode server stopped answering health probes")
                        return
                    continue
                try:
                    ev = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield ev
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    def _over_budget(self, session_id: str) -> BudgetExceeded | None:
        """The first budget (own or an ancestor's) that the subtree's spending now exceeds."""
        sid: str | None = session_id
        seen: set[str] = set()
        while sid and sid not in seen:
            seen.add(sid)
            st = self.ledger.session(sid)
            if st is None:
                return None
            if st.max_tokens is not None and st.subtree_tokens > st.max_tokens:
                return BudgetExceeded(
                    session_id=session_id,
                    limit="tokens",
                    allowed=st.max_tokens,
                    used=st.subtree_tokens,
                    charged_to=sid,
                )
            if st.max_cost_usd is not None and st.subtree_cost_usd > st.max_cost_usd:
                return BudgetExceeded(
                    session_id=session_id,
                    limit="cost_usd",
                    allowed=st.max_cost_usd,
                    used=round(st.subtree_cost_usd, 6),
                    charged_to=sid,
                )
            sid = st.parent_session_id
        return None
