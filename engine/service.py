"""DelegationService: the one place where a delegation request becomes a supervised agent.

    1. record the request as received (even a malformed one)
    2. build the chain context from the ledger (the parent comes from the caller's token)
    3. gate.evaluate(request, context, now, constitution)            -- pure
    4. record the decision (approvals and refusals alike)
    5. queue the agent with the AgentManager; return the session id at once
Ingress adapters (MCP tools, CLI) only parse, call this, and render.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import logfire

import gate
from engine.backend import AgentBackend, AgentSpec
from engine.chain_context import build_context
from engine.manager import AgentManager, Supervised, record
from engine.other_engines import Orphans, other_engine, wait_on_ledger
from engine.permissions import PermissionPolicy
from engine.refusals import (
    DelegationRefused,
    LedgerUnavailable,
    NotAllowed,
    OtherEngine,
    OtherEngineGone,
    SessionNotRunning,
    UnknownSession,
)
from engine.roles import Role, load_catalogue
from engine.settings import EngineSettings
from engine.tokens import OPERATOR, SessionTokens
from ledger import Ledger, canonical_bytes
from ledger.errors import PayloadError
from schemas.events import (
    TERMINAL_STATUSES,
    AgentSpawned,
    ConstitutionLoaded,
    DelegationRequested,
    DelegationRevoked,
    GateDecided,
    MessageSent,
    OperatorNote,
    Verdict,
)
from schemas.requests import SpawnRequest
from schemas.state import SessionState


def _utcnow() -> datetime:
    return datetime.now(UTC)


def compose_prompt(req: SpawnRequest, role: Role | None) -> str:
    """The instructions sent to the agent: the task, what to return, the context, the constraints."""
    dc = req.delegation_context
    parts = [req.instructions.strip()]
    if req.expected_output:
        parts.append(f"Expected output: {req.expected_output.strip()}")
    if req.context:
        parts.append("Context:\n" + "\n".join(f"- {k}: {v}" for k, v in req.context.items()))
    parts.append(
        f"You act as {req.role} for {dc.delegator}, on task {req.original_task.task_id} "
        f"({req.original_task.title}) under the authority of {req.cap_origin.ultimate_authority}."
    )
    if dc.constraints:
        parts.append("Constraints you must respect:\n" + "\n".join(f"- {c}" for c in dc.constraints))
    if dc.scopes:
        parts.append("Your delegated scopes: " + ", ".join(dc.scopes))
    return "\n\n".join(parts)


class DelegationService:
    def __init__(
        self,
        ledger: Ledger,
        settings: EngineSettings,
        backend: AgentBackend,
        constitution: gate.Constitution,
        *,
        tokens: SessionTokens | None = None,
        clock: Callable[[], datetime] = _utcnow,
        agent_mcp_url: str | None = None,
        engine_id: str | None = None,
    ) -> None:
        """``engine_id``: recorded with each approved delegation (``engine/owner.py``)."""
        self.ledger = ledger
        self.engine_id = engine_id
        #: settles the sessions of engines that stop while this one runs (set by the runtime)
        self.orphans: Orphans | None = None
        self.settings = settings
        self.backend = backend
        self.constitution = constitution
        self.tokens = tokens or SessionTokens()
        self.clock = clock
        self.agent_mcp_url = agent_mcp_url
        self.manager = AgentManager(
            ledger, backend, max_concurrent=settings.max_concurrent, on_finished=self._finished
        )

    async def record_constitution(self, source: str | None) -> None:
        """Record the ruleset in force when it differs from the last one the ledger holds."""
        last = next(self.ledger.entries(types=["constitution.loaded"], descending=True, limit=1), None)
        current = self.constitution.ruleset_hash
        if last is not None and (last.data() or {}).get("ruleset_hash") == current:
            return
        await record(
            self.ledger,
            "ledger",
            ConstitutionLoaded(
                ruleset_hash=current,
                profile=self.constitution.profile,
                source=source,
                document={"rules_version": gate.RULES_VERSION, **self.constitution.model_dump(mode="json")},
            ),
        )

    async def _finished(self, session_id: str) -> None:
        self.tokens.revoke(session_id)

    # -- roles ---------------------------------------------------------------------------------
    def roles(self, project_directory: str | None) -> dict[str, Role]:
        return load_catalogue(project_directory, self.settings.roles_dirs)

    # -- decide --------------------------------------------------------------------------------
    def parent_of(self, caller: str | None) -> str | None:
        """The parent session of a call: the session the caller's token belongs to (never a claim)."""
        return None if caller in (None, OPERATOR) else caller

    def judge(self, raw: dict[str, Any], parent: str | None) -> tuple[Verdict, datetime, dict[str, Any]]:
        """Run the gate against the current ledger and constitution (no recording).

        Returns the verdict, the time it was taken at, and the facts resolved outside the ledger
        (directory, role catalogue), which are recorded so that an auditor can re-run it.
        """
        project = raw.get("project_directory") if isinstance(raw.get("project_directory"), str) else None
        known = frozenset(self.roles(project))
        ctx = build_context(self.ledger, raw, parent, known)
        now = self.clock()
        facts = {
            "known_roles": sorted(known),
            "parents": [h.session_id for h in ctx.parents],
            "directory": None
            if ctx.directory is None
            else {
                "path": ctx.directory.path,
                "exists": ctx.directory.exists,
                "is_dir": ctx.directory.is_dir,
                "real_path": ctx.directory.real_path,
            },
        }
        return gate.evaluate(raw, ctx, now, self.constitution), now, facts

    async def spawn(
        self, raw: dict[str, Any], *, caller: str | None = None, via: str = "mcp"
    ) -> tuple[str, Verdict]:
        """Judge, record and (when approved) queue a delegation; returns (session id, verdict) at once."""
        parent = self.parent_of(caller)
        if parent is not None:
            pstate = self.ledger.session(parent)
            if pstate is None:
                raise NotAllowed(f"the calling session {parent} is unknown to the ledger")
        session_id = str(uuid.uuid4())
        with logfire.span(
            # `delegation_id`, not `session_id`: logfire's default scrubbing blanks keys matching 'session'
            "delegation.spawn",
            delegation_id=session_id,
            parent=parent,
            role=str(raw.get("role")),
        ):
            try:
                request_copy = dict(raw)
                canonical_bytes(request_copy)
            except PayloadError:
                request_copy = {"unrepresentable": repr(raw)[:4000]}
            await record(
                self.ledger,
                session_id,
                DelegationRequested(
                    request=request_copy,
                    via=via,  # type: ignore[arg-type]
                    caller=caller,
                    parent_session_id=parent,
                ),
            )
            with logfire.span("gate.evaluate", delegation_id=session_id) as span:
                verdict, judged_at, facts = self.judge(raw, parent)
                span.set_attribute("decision", verdict.decision)
                span.set_attribute("rules", [f.rule for f in verdict.violations])
            depth = 0 if parent is None else (self.ledger.session(parent).depth + 1)  # type: ignore[union-attr]
            await record(
                self.ledger,
                session_id,
                GateDecided(
                    verdict=verdict,
                    task_id=str(raw.get("task_id")) if raw.get("task_id") is not None else None,
                    role=str(raw.get("role")) if raw.get("role") is not None else None,
                    parent_session_id=parent,
                    depth=depth,
                    request_hash=hashlib.sha256(canonical_bytes(request_copy)).hexdigest(),
                    evaluated_at=judged_at,
                    facts=facts,
                    engine=self.engine_id,
                ),
            )
            if verdict.decision != "approved":
                raise DelegationRefused(session_id, verdict)
            req = SpawnRequest.model_validate(raw)
            self._queue(session_id, req, parent, depth)
        return session_id, verdict

    def _queue(self, session_id: str, req: SpawnRequest, parent: str | None, depth: int) -> None:
        dc = req.delegation_context
        policy = PermissionPolicy.from_request(req)
        budget = dc.budget
        default = self.constitution.default_budget
        max_tokens = (
            budget.max_tokens
            if budget and budget.max_tokens is not None
            else (default.max_tokens if default else None)
        )
        max_cost = (
            budget.max_cost_usd
            if budget and budget.max_cost_usd is not None
            else (default.max_cost_usd if default else None)
        )
        root = session_id if parent is None else self.ledger.session(parent).root_session_id  # type: ignore[union-attr]
        timeout = req.timeout_seconds or self.settings.default_timeout_s
        if dc.expires_at is not None:
            timeout = max(0.001, min(timeout, (dc.expires_at - self.clock()).total_seconds()))
        role = self.roles(req.project_directory).get(req.role)
        model = req.model if req.model and "/" in req.model else self.settings.model
        spec = AgentSpec(
            session_id=session_id,
            role=req.role,
            title=req.title or f"{req.role}: {req.original_task.title}",
            prompt=compose_prompt(req, role),
            project_directory=req.project_directory,
            model=model,
            permission=policy.opencode_config(),
            system=role.prompt if role else None,
            mcp_url=self.agent_mcp_url,
            metadata={"delegation_session": session_id, "task_id": req.task_id},
        )
        spawned = AgentSpawned(
            session_id=session_id,
            task_id=req.task_id,
            role=req.role,
            parent_session_id=parent,
            root_session_id=root,
            depth=depth,
            principal=dc.delegated_to,
            delegator=dc.delegator,
            model=req.model,
            project_directory=req.project_directory,
            max_tokens=max_tokens,
            max_cost_usd=max_cost,
            expires_at=dc.expires_at,
            timeout_seconds=timeout,
            permissions=policy.rules,
        )
        self.manager.submit(
            Supervised(session_id=session_id, spec=spec, policy=policy, spawned=spawned, timeout_s=timeout)
        )

    # -- act on sessions ---------------------------------------------------------------------------
    def state(self, session_id: str) -> SessionState:
        st = self.ledger.session(session_id)
        if st is None:
            raise UnknownSession(session_id)
        return st

    def check_access(self, caller: str | None, session_id: str) -> SessionState:
        """A sub-agent may act only on its own subtree; the main agent (no token) on everything."""
        st = self.state(session_id)
        parent = self.parent_of(caller)
        if parent is None:
            return st
        node: SessionState | None = st
        seen: set[str] = set()
        while node is not None and node.session_id not in seen:
            if node.session_id == parent:
                return st
            seen.add(node.session_id)
            node = self.ledger.session(node.parent_session_id) if node.parent_session_id else None
        raise NotAllowed(
            f"session {parent} may only act on its own delegations; {session_id} is not one of them"
        )

    async def wait(
        self, session_id: str, timeout: float | None, caller: str | None = None
    ) -> tuple[SessionState, bool]:
        """Wait until the session is terminal or `timeout` passes; the caller's slot serves others meanwhile.
        A session of another engine is waited for on the ledger; if that engine stops without recording
        its end, the session is settled here (``Orphans``) and the wait goes on."""
        st = self.check_access(caller, session_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.manager.lend_slot(self.parent_of(caller)):
            for _ in range(8):  # each round: its engine stopped, and the session was settled meanwhile
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if (
                    self.manager.supervises(session_id)
                    or st.status in TERMINAL_STATUSES
                    or st.engine in (None, self.engine_id)
                ):
                    done = await self.manager.wait(session_id, left)
                    self._recorded(session_id)
                    break
                try:  # another engine's: it records the end
                    done = await wait_on_ledger(self.ledger, session_id, left)
                    break
                except OtherEngineGone:
                    if self.orphans is None:
                        raise
                    await self.orphans.settle(session_id)
                    st = self.state(session_id)
            else:
                raise OtherEngineGone(f"session {session_id} changed engines too often while waited for")
        return self.state(session_id), done

    def _recorded(self, session_id: str) -> None:
        """Refuse to answer with a state the ledger could not record the end of (a full disk)."""
        kept = self.manager.unrecorded.get(session_id)
        if kept is not None:
            terminal, why = kept
            raise LedgerUnavailable(
                f"session {session_id} ended ({terminal.type}), but the ledger could not record it ({why}); "
                "its agent was stopped, as nothing it does can be recorded. This engine records the end "
                f"as soon as the ledger can write again (it tries every {self.manager.retry_s:g} s)"
            )

    def _here(self, st: SessionState, doing: str) -> None:
        """Refuse to act on a session that another engine runs (it alone holds its agent)."""
        other = None if self.manager.supervises(st.session_id) else other_engine(st, self.engine_id)
        if other is not None:
            raise OtherEngine(
                f"cannot {doing} session {st.session_id}: it runs under {other}, another engine on this "
                "ledger; use that engine's MCP server, or revoke_delegation here (that engine stops it)"
            )

    async def send(self, session_id: str, text: str, caller: str | None = None) -> None:
        st = self.check_access(caller, session_id)
        if st.status in TERMINAL_STATUSES:
            raise SessionNotRunning(f"session {session_id} is {st.status}; spawn a new delegation instead")
        self._here(st, "send a message to")
        if not self.manager.can_send(session_id):  # checked first: a message.sent is a message delivered
            raise SessionNotRunning(
                f"session {session_id} is {st.status}: its agent has not started yet (it waits for a "
                "slot); send the message once it runs, or stop it and delegate again"
                if st.status == "queued"
                else f"session {session_id} is {st.status} and has no running agent here to take a message"
            )
        sent = await record(
            self.ledger,
            session_id,
            MessageSent(session_id=session_id, text=text, sender=caller or "delegator"),
        )
        try:
            await self.manager.send(session_id, text)
        except Exception as exc:  # recorded first (never missing from the ledger); its failure is too
            why = f"{type(exc).__name__}: {exc}"
            await record(
                self.ledger,
                session_id,
                OperatorNote(
                    text=f"the message recorded at seq {sent.seq} did not reach the agent ({why})",
                    by="engine",
                    kind="incident",
                ),
            )
            raise SessionNotRunning(
                f"the message to session {session_id} did not reach its agent ({why}); the ledger says so"
            ) from exc

    async def stop(self, session_id: str, reason: str, by: str | None) -> SessionState:
        self._here(self.check_access(by, session_id), "stop")
        await self.manager.stop(session_id, reason, by or "delegator")
        return self.state(session_id)

    def subtree(self, session_id: str) -> list[str]:
        """Every descendant, queued ones included (a child joins its parent's `children` only once
        spawned, but an approved child waiting for a slot already names its parent)."""
        root = self.state(session_id).root_session_id
        kids: dict[str, list[str]] = {}
        for st in self.ledger.sessions(root_session_id=root):
            if st.parent_session_id is not None:
                kids.setdefault(st.parent_session_id, []).append(st.session_id)
        out: list[str] = []
        stack = list(reversed(kids.get(session_id, [])))
        while stack:
            sid = stack.pop()
            if sid in out:
                continue
            out.append(sid)
            stack.extend(reversed(kids.get(sid, [])))
        return out

    async def revoke(self, session_id: str, reason: str, by: str | None) -> list[str]:
        """Revoke a delegation and its whole subtree: record it, then stop every live agent in it."""
        self.check_access(by, session_id)
        subtree = self.subtree(session_id)
        await record(
            self.ledger,
            session_id,
            DelegationRevoked(session_id=session_id, by=by or "delegator", reason=reason, subtree=subtree),
        )
        await asyncio.gather(
            *(
                self.manager.stop(sid, f"revoked: {reason}", by or "delegator")
                for sid in [session_id, *subtree]
            ),
            return_exceptions=True,
        )
        return [session_id, *subtree]

    def tree(self, session_id: str) -> dict[str, Any]:
        st = self.state(session_id)
        return {**st.model_dump(), "children": [self.tree(c) for c in st.children if self.ledger.session(c)]}

    def outputs(self, session_id: str) -> list[dict[str, Any]]:
        return [e.data() or {} for e in self.ledger.entries(stream=session_id, types=["output.received"])]

    async def note(self, stream: str, text: str, by: str) -> None:
        await record(self.ledger, stream, OperatorNote(text=text, by=by))

    async def shutdown(self) -> None:
        await self.manager.shutdown()


def readopt(service: DelegationService, session_id: str, agent: Any) -> None:
    """Supervise again an agent that survived a restart of the engine."""
    from engine.chain_context import recorded_request

    st = service.state(session_id)
    raw = recorded_request(service.ledger, session_id)
    if raw is None:
        raise UnknownSession(session_id)
    req = SpawnRequest.model_validate(raw)
    policy = PermissionPolicy.from_request(req)
    spec = AgentSpec(
        session_id=session_id,
        role=req.role,
        title=req.title or req.role,
        prompt="",
        project_directory=req.project_directory,
        model=req.model,
        permission=policy.opencode_config(),
    )
    spawned = AgentSpawned(
        session_id=session_id,
        task_id=st.task_id,
        role=st.role,
        parent_session_id=st.parent_session_id,
        root_session_id=st.root_session_id,
        depth=st.depth,
        principal=st.principal or st.role,
        delegator=st.delegator or "unknown",
    )
    # the timeout runs from the agent's start, not from the restart
    started = next(iter(service.ledger.entries(stream=session_id, types=["agent.spawned"], limit=1)), None)
    service.manager.adopt(
        Supervised(
            session_id=session_id,
            spec=spec,
            policy=policy,
            spawned=spawned,
            timeout_s=req.timeout_seconds or service.settings.default_timeout_s,
            used_s=0.0 if started is None else max(0.0, time.time() - started.recorded_at_us / 1e6),
        ),
        agent,
    )
