"""One frozen model per lifecycle event type, joined as a discriminated union on `type`.

An event's payload is the model dumped in JSON mode, `type` included; the ledger stores it as
RFC 8785 canonical bytes. `stream` (the delegation it belongs to) lives in the entry header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, TypeAdapter

from schemas.base import Frozen, NonEmptyStr, Timestamp

Decision = Literal["approved", "rejected"]
Severity = Literal["error", "warning"]
SessionStatus = Literal[
    "queued", "starting", "running", "completed", "stopped", "failed", "interrupted", "revoked"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "stopped", "failed", "interrupted", "revoked"})
#: the statuses a session can still leave: every SessionStatus that is not terminal
LIVE_STATUSES: tuple[str, ...] = tuple(x for x in get_args(SessionStatus) if x not in TERMINAL_STATUSES)


class Finding(Frozen):
    """One rule's verdict on one place of the request."""

    rule: NonEmptyStr
    severity: Severity
    hop: int = Field(ge=0, description="0 is the root hop; the new hop has the chain's depth")
    path: str
    message: NonEmptyStr
    expected: Any = None
    actual: Any = None


class Verdict(Frozen):
    """What the gate decided, under which rules, against which ledger state."""

    decision: Decision
    profile: NonEmptyStr
    ruleset_hash: NonEmptyStr
    ledger_head: str | None = None
    violations: list[Finding] = []
    warnings: list[Finding] = []


class Tokens(Frozen):
    input: int = Field(0, ge=0)
    output: int = Field(0, ge=0)
    reasoning: int = Field(0, ge=0)
    cache_read: int = Field(0, ge=0)
    cache_write: int = Field(0, ge=0)

    @property
    def total(self) -> int:
        return self.input + self.output + self.reasoning


class _Event(Frozen):
    pass


class DelegationRequested(_Event):
    type: Literal["delegation.requested"] = "delegation.requested"
    request: dict[str, Any] = Field(description="the arguments as received, unvalidated")
    via: Literal["mcp", "cli", "api"] = "mcp"
    caller: str | None = Field(None, description="the authenticated caller (session token owner), if any")
    parent_session_id: str | None = None


class GateDecided(_Event):
    type: Literal["gate.decided"] = "gate.decided"
    verdict: Verdict
    task_id: str | None = None
    role: str | None = None
    parent_session_id: str | None = None
    depth: int = Field(0, ge=0)
    request_hash: str | None = Field(None, description="SHA-256 of the canonical request")
    evaluated_at: Timestamp | None = Field(None, description="the time handed to the gate")
    facts: dict[str, Any] = Field(
        default_factory=dict,
        description="what the engine resolved outside the "
        "ledger for this decision (directory, role catalogue), so it can be re-run",
    )
    engine: str | None = Field(
        None,
        description="the engine that runs the delegation once approved ('<boot id>:<pid namespace>/<pid>/"
        "<start ticks>/<instance>'): other engines leave alone the sessions of an engine that still runs",
    )


class AgentSpawned(_Event):
    type: Literal["agent.spawned"] = "agent.spawned"
    session_id: NonEmptyStr
    task_id: NonEmptyStr
    role: NonEmptyStr
    parent_session_id: str | None = None
    root_session_id: NonEmptyStr
    depth: int = Field(0, ge=0)
    principal: NonEmptyStr = Field(description="delegation_context.delegated_to")
    delegator: NonEmptyStr
    model: str | None = None
    project_directory: str | None = None
    opencode_session_id: str | None = None
    server_url: str | None = None
    pid: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    expires_at: Timestamp | None = None
    timeout_seconds: float | None = None
    permissions: dict[str, Any] = {}


class MessageSent(_Event):
    type: Literal["message.sent"] = "message.sent"
    session_id: NonEmptyStr
    text: str
    sender: str = "delegator"


class ToolCalled(_Event):
    type: Literal["tool.called"] = "tool.called"
    session_id: NonEmptyStr
    tool: NonEmptyStr
    call_id: str | None = None
    status: Literal["completed", "error", "running", "pending"] = "completed"
    input: dict[str, Any] = {}
    output: str | None = None
    error: str | None = None


class PermissionDecided(_Event):
    type: Literal["permission.decided"] = "permission.decided"
    session_id: NonEmptyStr
    permission_id: str | None = None
    permission: NonEmptyStr
    patterns: list[str] = []
    reply: Literal["once", "always", "reject"]
    reason: NonEmptyStr


class OutputReceived(_Event):
    type: Literal["output.received"] = "output.received"
    session_id: NonEmptyStr
    message_id: str | None = None
    text: str
    tokens: Tokens = Tokens()
    cost_usd: float = Field(0.0, ge=0, allow_inf_nan=False)


class AgentCompleted(_Event):
    type: Literal["agent.completed"] = "agent.completed"
    session_id: NonEmptyStr
    summary: str | None = None


class AgentStopped(_Event):
    type: Literal["agent.stopped"] = "agent.stopped"
    session_id: NonEmptyStr
    reason: NonEmptyStr
    by: str | None = None


class AgentFailed(_Event):
    type: Literal["agent.failed"] = "agent.failed"
    session_id: NonEmptyStr
    error: NonEmptyStr
    kind: Literal["error", "timeout", "budget", "expired", "crash"] = "error"


class SessionInterrupted(_Event):
    type: Literal["session.interrupted"] = "session.interrupted"
    session_id: NonEmptyStr
    reason: NonEmptyStr


class SessionAdopted(_Event):
    """An engine takes over a live session whose engine stopped without recording its end (two engines
    share the ledger, or one restarted): from here on it alone supervises the session (re-attached
    to its agent) or records its end. Appended on the condition that the session is still live and
    still its previous engine's, so of several engines that notice at once exactly one adopts it."""

    type: Literal["session.adopted"] = "session.adopted"
    session_id: NonEmptyStr
    engine: NonEmptyStr = Field(description="the engine that supervises the session from now on")
    previous_engine: str | None = Field(None, description="the engine that stopped (None: not recorded)")
    reason: NonEmptyStr


class DelegationRevoked(_Event):
    type: Literal["delegation.revoked"] = "delegation.revoked"
    session_id: NonEmptyStr
    by: NonEmptyStr
    reason: NonEmptyStr
    subtree: list[str] = Field(default_factory=list, description="descendant sessions revoked with it")


class CheckpointSigned(_Event):
    type: Literal["checkpoint.signed"] = "checkpoint.signed"
    size: int = Field(ge=0)
    root_hash: NonEmptyStr
    head_hash: str | None = None
    note: NonEmptyStr
    trigger: Literal["manual", "prune", "periodic", "audit"] = "manual"
    audit_report_sha256: str | None = None


class SessionSnapshot(Frozen):
    """A pruned session's final projected state, so replay stays complete without its payloads."""

    session_id: NonEmptyStr
    state: dict[str, Any]


class Pruned(_Event):
    type: Literal["ledger.pruned"] = "ledger.pruned"
    cutoff: Timestamp
    entries: int = Field(ge=0)
    payload_bytes: int = Field(ge=0)
    sessions: list[SessionSnapshot]
    archive: str | None = None
    archive_sha256: str | None = None


class OperatorNote(_Event):
    type: Literal["operator.note"] = "operator.note"
    text: NonEmptyStr
    by: NonEmptyStr
    kind: Literal["note", "oversight", "incident"] = "note"


class BudgetExceeded(_Event):
    type: Literal["budget.exceeded"] = "budget.exceeded"
    session_id: NonEmptyStr
    limit: Literal["tokens", "cost_usd", "time"]
    allowed: float
    used: float
    charged_to: NonEmptyStr = Field(description="the session whose budget ran out (self or an ancestor)")


class ConstitutionLoaded(_Event):
    """The rules in force from now on: recorded when the engine starts with a new ruleset."""

    type: Literal["constitution.loaded"] = "constitution.loaded"
    ruleset_hash: NonEmptyStr
    profile: NonEmptyStr
    document: dict[str, Any] = Field(description="the normalised constitution the hash was computed over")
    source: str | None = None


class AuditIssued(_Event):
    type: Literal["audit.issued"] = "audit.issued"
    report_sha256: NonEmptyStr
    scope: dict[str, Any]
    by: str | None = None


Event = Annotated[
    DelegationRequested
    | GateDecided
    | AgentSpawned
    | MessageSent
    | ToolCalled
    | PermissionDecided
    | OutputReceived
    | AgentCompleted
    | AgentStopped
    | AgentFailed
    | SessionInterrupted
    | SessionAdopted
    | DelegationRevoked
    | CheckpointSigned
    | Pruned
    | OperatorNote
    | BudgetExceeded
    | ConstitutionLoaded
    | AuditIssued,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_MODELS: dict[str, type[_Event]] = {
    m.model_fields["type"].default: m  # type: ignore[misc]
    for m in _Event.__subclasses__()
}
EVENT_TYPES: tuple[str, ...] = tuple(sorted(EVENT_MODELS))


def event_model(event_type: str) -> type[_Event]:
    """The model of one event type; KeyError names the known types."""
    try:
        return EVENT_MODELS[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}") from None


def parse_event_payload(payload: dict[str, Any]) -> Event:
    """Validate a payload (with its `type`) into its event model."""
    return EVENT_ADAPTER.validate_python(payload)
