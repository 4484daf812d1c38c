"""Projections: the state the ledger folds from events (sessions, tree, budgets, revocations)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import SessionStatus


class SessionState(BaseModel):
    """One delegation's projected state (mutable while folding; dumped for snapshots and checks)."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    task_id: str
    role: str
    status: SessionStatus = "starting"
    parent_session_id: str | None = None
    root_session_id: str
    depth: int = 0
    principal: str = ""
    delegator: str = ""
    created_at: str = ""
    updated_at: str = ""
    ended_at: str | None = None
    opencode_session_id: str | None = None
    server_url: str | None = None
    pid: int | None = None
    tokens_used: int = 0
    cost_usd: float = 0.0
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    subtree_tokens: int = Field(0, description="tokens used by this session and all its descendants")
    subtree_cost_usd: float = 0.0
    tool_calls: int = 0
    permissions_decided: int = 0
    permissions_rejected: int = 0
    messages: int = 0
    last_output: str | None = None
    revoked: bool = False
    end_reason: str | None = None
    children: list[str] = Field(default_factory=list)
    engine: str | None = Field(
        None, description="the engine that runs it (gate.decided engine; session.adopted: its new one)"
    )
