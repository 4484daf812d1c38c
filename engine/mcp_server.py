"""The MCP server (FastMCP): ct_dev's nine tools with their flat arguments, plus our own.

Tools are thin: they parse, call the DelegationService, and render. The caller is identified by
its bearer token (sub-agents over HTTP); over stdio or in memory the caller is the main agent. A
token that is not bound to a session yet (a warm pool's server, see ``engine/tokens.py``) gets
through MCP's handshake but no tool call.
A gate refusal is a tool error whose text names every violated rule. Spawn requests that do not
even match the tool's argument schema are still judged and recorded (SCH-01/SCH-02) by the
middleware below, so the client sees the same rule and field the ledger holds.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import logfire
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsError
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from pydantic import Field, ValidationError

from engine.refusals import DelegationError
from engine.service import DelegationService
from engine.tokens import OWNER_CLAIM, SessionTokens, SessionTokenVerifier
from schemas.events import LIVE_STATUSES

Str = Annotated[str, Field(min_length=1)]
SPAWN_TOOLS = frozenset({"spawn_agent", "delegate"})
_SPAWN_KEYS = (
    "role",
    "task_id",
    "instructions",
    "project_directory",
    "expected_output",
    "context",
    "model",
    "original_task",
    "cap_origin",
    "delegation_context",
    "timeout_seconds",
    "title",
)


def caller() -> str | None:
    """The owner of the request's token (None: no token, the main agent over stdio or in memory)."""
    token = get_access_token()
    if token is None:
        return None
    owner = token.claims.get(OWNER_CLAIM)
    if owner is None:
        raise ToolError("this token is not bound to a session yet: no tool can be called with it")
    return str(owner)


class BoundTokensOnly(Middleware):
    """Every tool call needs a caller: a bound token, or none at all (stdio, in memory)."""

    async def on_call_tool(self, context: MiddlewareContext, call_next: Any) -> Any:
        caller()
        return await call_next(context)


def _spawn_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k in _SPAWN_KEYS and v is not None}


class RecordMalformedSpawns(Middleware):
    """A spawn whose arguments fail the tool schema is judged and recorded, then refused by rule."""

    def __init__(self, service: DelegationService) -> None:
        self.service = service

    async def on_call_tool(self, context: MiddlewareContext, call_next: Any) -> Any:
        name = context.message.name
        with logfire.span("mcp.tool {tool}", tool=name):
            try:
                return await call_next(context)
            except (ArgumentsError, ValidationError):  # FastMCP 4.1 wraps pydantic's in its own
                if name not in SPAWN_TOOLS:
                    raise
            raw = {
                k: v for k, v in dict(context.message.arguments or {}).items() if k not in ("wait_seconds",)
            }
            try:
                session_id, verdict = await self.service.spawn(raw, caller=caller())
            except DelegationError as exc:
                raise ToolError(str(exc)) from None
            return ToolResult(
                structured_content={
                    "session_id": session_id,
                    "status": "queued",
                    "warnings": [w.model_dump() for w in verdict.warnings],
                }
            )


def _tool_error(exc: DelegationError) -> ToolError:
    return ToolError(str(exc))


def build_server(service: DelegationService, *, tokens: SessionTokens | None = None) -> FastMCP:
    auth = SessionTokenVerifier(tokens or service.tokens)
    mcp = FastMCP(
        "delegation-ledger",
        instructions=(
            "Delegate work to OpenCode sub-agents under a checked responsibility chain. Every spawn "
            "carries original_task, cap_origin and delegation_context; the ConstitutionGate judges it "
            "and the ledger records everything."
        ),
        auth=auth,
        middleware=[BoundTokensOnly(), RecordMalformedSpawns(service)],
    )

    async def _spawn(args: dict[str, Any]) -> dict[str, Any]:
        try:
            session_id, verdict = await service.spawn(_spawn_args(args), caller=caller())
        except DelegationError as exc:
            raise _tool_error(exc) from None
        return {
            "session_id": session_id,
            "status": "queued",
            "decision": verdict.decision,
            "warnings": [w.model_dump() for w in verdict.warnings],
        }

    @mcp.tool
    async def spawn_agent(
        role: Annotated[str, Field(description="Role (agent) to delegate to, e.g. backend_specialist")],
        task_id: Annotated[str, Field(description="Id of the task; must equal original_task.task_id")],
        instructions: Annotated[str, Field(description="What the agent must do")],
        project_directory: Annotated[str, Field(description="Absolute path of the project folder")],
        original_task: Annotated[
            dict[str, Any], Field(description="task_id, title, description, requester, requested_at")
        ],
        cap_origin: Annotated[
            dict[str, Any], Field(description="ultimate_authority, original_scope, granted_at, grant_context")
        ],
        delegation_context: Annotated[
            dict[str, Any],
            Field(
                description="delegator, delegator_cap, delegated_to, "
                "delegated_cap, constraints, phantom_level, delegated_at"
            ),
        ],
        expected_output: str | None = None,
        context: dict[str, Any] | None = None,
        model: str | None = None,
        timeout_seconds: Annotated[float | None, Field(gt=0)] = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        """Start a sub-agent for a delegation; returns at once with its session id (or a refusal naming each rule)."""
        return await _spawn(dict(locals()))

    @mcp.tool
    async def delegate(
        role: str,
        task_id: str,
        instructions: str,
        project_directory: str,
        original_task: dict[str, Any],
        cap_origin: dict[str, Any],
        delegation_context: dict[str, Any],
        ctx: Context,
        expected_output: str | None = None,
        context: dict[str, Any] | None = None,
        model: str | None = None,
        timeout_seconds: Annotated[float | None, Field(gt=0)] = None,
        title: str | None = None,
        wait_seconds: Annotated[
            float, Field(gt=0, le=3600, description="How long to wait for the result")
        ] = 600,
    ) -> dict[str, Any]:
        """Spawn a sub-agent and wait for its result, reporting progress while it works."""
        args = {k: v for k, v in locals().items() if k not in ("ctx", "wait_seconds")}
        started = await _spawn(args)
        sid = started["session_id"]
        waited = 0.0
        while True:
            state, done = await service.wait(sid, min(5.0, wait_seconds - waited), caller=caller())
            waited += 5.0
            if done:
                break
            await ctx.report_progress(
                min(waited, wait_seconds),
                wait_seconds,
                f"{state.role}: {state.status}, {state.tool_calls} tool call(s)",
            )
            if waited >= wait_seconds:
                break
        return {
            "session_id": sid,
            "status": state.status,
            "done": done,
            "output": state.last_output,
            "tokens_used": state.tokens_used,
            "cost_usd": state.cost_usd,
            "end_reason": state.end_reason,
        }

    @mcp.tool
    async def query_session(session_id: Str) -> dict[str, Any]:
        """State of one delegation: status, role, depth, tokens, cost, children, last output."""
        try:
            state = service.check_access(caller(), session_id).model_dump()
        except DelegationError as exc:
            raise _tool_error(exc) from None
        kept = service.manager.unrecorded.get(session_id)
        if kept is not None:  # ended here, but the ledger (full) could not record it yet
            state["unrecorded_end"] = {"type": kept[0].type, "why": kept[1]}
        return state

    @mcp.tool
    async def send_to_agent(session_id: Str, message: Str) -> dict[str, Any]:
        """Send a follow-up message to a running agent."""
        try:
            await service.send(session_id, message, caller=caller())
        except DelegationError as exc:
            raise _tool_error(exc) from None
        return {"session_id": session_id, "sent": True}

    @mcp.tool
    async def get_agent_output(session_id: Str) -> dict[str, Any]:
        """Everything the agent has answered so far, with tokens and cost."""
        try:
            st = service.check_access(caller(), session_id)
        except DelegationError as exc:
            raise _tool_error(exc) from None
        outs = service.outputs(session_id)
        return {
            "session_id": session_id,
            "status": st.status,
            "outputs": [o.get("text", "") for o in outs],
            "last_output": st.last_output,
            "tokens_used": st.tokens_used,
            "cost_usd": st.cost_usd,
        }

    @mcp.tool
    async def stop_agent(session_id: Str, reason: str = "stopped by the delegator") -> dict[str, Any]:
        """Stop a running agent (abort, then terminate its server)."""
        try:
            st = await service.stop(session_id, reason, caller())
        except DelegationError as exc:
            raise _tool_error(exc) from None
        return {"session_id": session_id, "status": st.status}

    @mcp.tool
    async def list_active_sessions() -> dict[str, Any]:
        """Delegations not yet finished, with the manager's statistics."""
        active = [
            s.model_dump(
                include={
                    "session_id",
                    "task_id",
                    "role",
                    "status",
                    "depth",
                    "parent_session_id",
                    "tokens_used",
                    "cost_usd",
                }
            )
            for s in service.ledger.sessions(statuses=LIVE_STATUSES)
        ]
        return {"sessions": active, "stats": service.manager.statistics()}

    @mcp.tool
    async def list_available_agent_roles(project_directory: str | None = None) -> dict[str, Any]:
        """Roles that can be delegated to: our role catalogue merged with OpenCode's agents."""
        roles = service.roles(project_directory)
        try:
            agents = await service.backend.agents(project_directory)
        except Exception as exc:  # OpenCode unavailable: the catalogue still answers
            agents, note = [], f"OpenCode agents unavailable: {exc}"
        else:
            note = None
        out = [r.to_json() for r in roles.values()]
        known = set(roles)
        out += [
            {
                "name": a.get("name"),
                "description": a.get("description") or "",
                "source": "opencode",
                "mode": a.get("mode"),
            }
            for a in agents
            if a.get("name") not in known
        ]
        return {"roles": sorted(out, key=lambda r: r["name"]), "note": note}

    @mcp.tool
    async def get_agent_capabilities(role: Str, project_directory: str | None = None) -> dict[str, Any]:
        """What a role is and may do: its description, model, permissions, and OpenCode's view of it."""
        roles = service.roles(project_directory)
        agents = {a.get("name"): a for a in await service.backend.agents(project_directory)}
        if role not in roles and role not in agents:
            raise ToolError(
                f"unknown role {role!r}; known roles: {', '.join(sorted(set(roles) | set(agents)))}"
            )
        info: dict[str, Any] = (
            roles[role].to_json() if role in roles else {"name": role, "source": "opencode"}
        )
        info["opencode_agent"] = agents.get(role)
        return info

    @mcp.tool
    async def list_opencode_models() -> dict[str, Any]:
        """Providers and models that OpenCode offers (from the real OpenCode server)."""
        return await service.backend.providers()

    @mcp.tool
    async def wait_for_agent(
        session_id: Str, timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 30
    ) -> dict[str, Any]:
        """Long-poll until the agent finishes or the timeout passes (for clients with short tool timeouts)."""
        try:
            st, done = await service.wait(session_id, timeout_seconds, caller=caller())
        except DelegationError as exc:
            raise _tool_error(exc) from None
        return {
            "session_id": session_id,
            "done": done,
            "status": st.status,
            "end_reason": st.end_reason,
            "output": st.last_output,
            "tokens_used": st.tokens_used,
            "cost_usd": st.cost_usd,
        }

    @mcp.tool
    async def delegate_batch(
        requests: list[dict[str, Any]],
        wait: bool = False,
        wait_seconds: Annotated[float, Field(gt=0, le=3600)] = 600,
    ) -> dict[str, Any]:
        """Spawn several delegations at once; each is judged on its own (refusals do not stop the others)."""
        results: list[dict[str, Any]] = []
        for raw in requests:
            try:
                sid, _verdict = await service.spawn(dict(raw), caller=caller())
                results.append({"session_id": sid, "decision": "approved"})
            except DelegationError as exc:
                results.append(
                    {
                        "session_id": getattr(exc, "session_id", None),
                        "decision": "rejected",
                        "error": str(exc),
                    }
                )
        if wait:
            sids = [r["session_id"] for r in results if r["decision"] == "approved"]
            await asyncio.gather(*(service.wait(s, wait_seconds, caller=caller()) for s in sids))
            for r in results:
                if r["decision"] == "approved":
                    st = service.state(r["session_id"])
                    r.update(status=st.status, output=st.last_output)
        return {"results": results}

    @mcp.tool
    async def revoke_delegation(session_id: Str, reason: Str) -> dict[str, Any]:
        """Revoke a delegation: record it and stop its whole subtree."""
        try:
            revoked = await service.revoke(session_id, reason, caller())
        except DelegationError as exc:
            raise _tool_error(exc) from None
        return {"revoked": revoked}

    @mcp.tool
    async def get_delegation_chain(session_id: Str) -> dict[str, Any]:
        """The delegation tree around a session: its path from the root, and the tree below the root."""
        try:
            st = service.check_access(caller(), session_id)
        except DelegationError as exc:
            raise _tool_error(exc) from None
        path, node = [], st
        while node is not None:
            path.append(node.session_id)
            node = service.ledger.session(node.parent_session_id) if node.parent_session_id else None
        return {"session_id": session_id, "path": path[::-1], "tree": service.tree(st.root_session_id)}

    @mcp.tool
    async def verify_ledger() -> dict[str, Any]:
        """Verify the whole ledger: every link, payload hash and signed checkpoint."""
        report = await asyncio.to_thread(service.ledger.verify)
        return report.to_json()

    # -- compliance audit (engine/audit; docs/audit.md) ------------------------------------------------
    @mcp.tool
    async def audit_task(
        task_id: Str, since: str | None = None, until: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Compliance audit of a task's delegation chains, from the ledger alone: the tree with every
        verdict re-run, actions, costs, refusals, findings. Returns {report, report_sha256}. `since` and
        `until` are RFC 3339 times; `session_id` limits the audit to one subtree."""
        from engine.audit import AuditInputError, build_sealed
        from schemas.base import parse_rfc3339

        if service.parent_of(caller()) is not None:  # a sub-agent audits only its own subtree
            if session_id is None:
                raise ToolError("a sub-agent may audit only its own delegations: pass session_id")
            try:
                service.check_access(caller(), session_id)
            except DelegationError as exc:
                raise _tool_error(exc) from None
        try:
            window = {k: parse_rfc3339(v) for k, v in (("since", since), ("until", until)) if v}
        except ValueError as exc:
            raise ToolError(f"since/until: {exc}") from None
        try:
            return await asyncio.to_thread(
                build_sealed,
                service.ledger,
                task_id,
                session_id=session_id,
                current=service.constitution,
                current_source="the engine's constitution in force",
                **window,
            )
        except AuditInputError as exc:
            raise ToolError(str(exc)) from None

    return mcp
