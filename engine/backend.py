"""What the engine needs from an agent runtime, and the normalised events it reads from one.

`engine/opencode_backend.py` implements it over real `opencode serve` processes; nothing else in
the engine knows OpenCode's wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.events import Tokens


@dataclass(frozen=True)
class AgentSpec:
    session_id: str
    role: str
    title: str
    prompt: str
    project_directory: str
    model: str | None
    permission: dict[str, Any]
    system: str | None = None
    #: our MCP server for the agent, reached with a token of its own (issued by the backend)
    mcp_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# -- normalised agent events -------------------------------------------------------------------


@dataclass(frozen=True)
class ToolUse:
    tool: str
    call_id: str | None
    status: str
    input: dict[str, Any]
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PermissionAsk:
    id: str
    permission: str
    patterns: list[str]


@dataclass(frozen=True)
class Output:
    message_id: str | None
    text: str
    tokens: Tokens
    cost_usd: float
    error: str | None = None


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Failure:
    message: str
    aborted: bool = False


AgentEvent = ToolUse | PermissionAsk | Output | Idle | Failure


class RunningAgent(Protocol):
    opencode_session_id: str
    server_url: str
    pid: int | None

    async def prompt(self, text: str) -> None: ...
    def events(self) -> AsyncIterator[AgentEvent]: ...
    async def reply_permission(self, permission_id: str, reply: str) -> None: ...
    async def abort(self) -> None: ...
    async def alive(self) -> bool: ...
    async def close(self) -> None: ...


class AgentBackend(Protocol):
    async def start(self, spec: AgentSpec) -> RunningAgent: ...
    async def attach(
        self,
        server_url: str,
        opencode_session_id: str,
        pid: int | None,
        session_id: str,
        *,
        mcp_url: str | None = None,
        recorded_calls: Iterable[str] = (),
        recorded_messages: Iterable[str] = (),
    ) -> RunningAgent | None: ...
    def leftovers(self) -> list[str]: ...
    async def stop_leftover(self, session_id: str) -> bool: ...
    async def agents(self, project_directory: str | None) -> list[dict[str, Any]]: ...
    async def providers(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...
