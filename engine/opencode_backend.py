"""AgentBackend over real `opencode serve` processes: one server per agent.

Each agent's server gets its config inline (provider, permission rules from its delegation, and
our MCP server as a remote MCP server with the agent's own bearer token). The event stream is
opened before the first prompt so nothing is missed, and OpenCode's events are mapped to the
engine's normalised ones. Server credentials are kept in a 0600 file under the engine's state
folder (never on the ledger) so that a restarted engine can re-attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from engine.backend import AgentEvent, AgentSpec, Failure, Idle, Output, PermissionAsk, ToolUse
from engine.opencode_client import OpenCodeClient, OpenCodeEvent
from engine.opencode_config import build_agent_config, remote_mcp, session_permission_rules
from engine.opencode_runner import OpenCodeService
from schemas.events import Tokens

MCP_NAME = "ledger"


def _tokens(info: Mapping[str, Any]) -> Tokens:
    t = info.get("tokens") or {}
    cache = t.get("cache") or {}
    return Tokens(
        input=int(t.get("input") or 0),
        output=int(t.get("output") or 0),
        reasoning=int(t.get("reasoning") or 0),
        cache_read=int(cache.get("read") or 0),
        cache_write=int(cache.get("write") or 0),
    )


def _error_text(err: Any) -> str:
    if not isinstance(err, Mapping):
        return str(err)
    data = err.get("data") if isinstance(err.get("data"), Mapping) else {}
    return f"{err.get('name', 'error')}: {data.get('message') or ''}".strip(": ")


class EventMapper:
    """OpenCode events of one session -> normalised AgentEvents (stateful: texts, dedup)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.texts: dict[str, dict[str, str]] = {}
        self.done_messages: set[str] = set()
        self.done_tools: set[str] = set()
        #: ended messages whose parts may still be on their way, and messages whose step finished.
        #: OpenCode 1.18.33 may publish a message's first `message.updated` already holding its final
        #: state (time.completed, tokens) *before* that message's step-start/text parts, so an ended
        #: message is reported once its `step-finish` part arrived (or at idle/error, whatever came).
        self.ended: dict[str, Mapping[str, Any]] = {}
        self.finished_steps: set[str] = set()

    def _output(self, mid: str) -> Output:
        info = self.ended.pop(mid)
        self.done_messages.add(mid)
        text = "".join(self.texts.pop(mid, {}).values())
        err = info.get("error")
        aborted = isinstance(err, Mapping) and err.get("name") == "MessageAbortedError"
        return Output(
            message_id=mid,
            text=text,
            tokens=_tokens(info),
            cost_usd=float(info.get("cost") or 0),
            error=None if (err is None or aborted) else _error_text(err),
        )

    def _flush(self) -> list[AgentEvent]:
        return [self._output(mid) for mid in list(self.ended)]

    def map(self, ev: OpenCodeEvent) -> list[AgentEvent]:
        if ev.session_id != self.session_id:
            return []
        p = ev.properties
        if ev.type == "message.part.updated":
            part = p.get("part") or {}
            if part.get("type") == "text":
                self.texts.setdefault(part.get("messageID", ""), {})[part.get("id", "")] = part.get(
                    "text", ""
                )
            elif part.get("type") == "step-finish":
                mid = part.get("messageID", "")
                self.finished_steps.add(mid)
                if mid in self.ended:
                    return [self._output(mid)]
            elif part.get("type") == "tool":
                state = part.get("state") or {}
                status = state.get("status")
                call = part.get("callID") or part.get("id")
                if status in ("completed", "error") and call not in self.done_tools:
                    self.done_tools.add(call)
                    out = state.get("output")
                    return [
                        ToolUse(
                            tool=str(part.get("tool")),
                            call_id=call,
                            status=status,
                            input=dict(state.get("input") or {}),
                            output=out if isinstance(out, str) else (json.dumps(out) if out else None),
                            error=state.get("error") if status == "error" else None,
                        )
                    ]
        elif ev.type == "message.updated":
            info = p.get("info") or {}
            mid = info.get("id")
            completed = (info.get("time") or {}).get("completed")
            if (
                info.get("role") == "assistant"
                and (completed or info.get("error"))
                and mid not in self.done_messages
            ):
                self.ended[mid] = info
                if mid in self.finished_steps:
                    return [self._output(mid)]
        elif ev.type == "permission.asked":
            return [
                PermissionAsk(
                    id=str(p.get("id")),
                    permission=str(p.get("permission")),
                    patterns=[str(x) for x in p.get("patterns") or []],
                )
            ]
        elif ev.type == "session.error":
            err = p.get("error")
            aborted = isinstance(err, Mapping) and err.get("name") == "MessageAbortedError"
            return [*self._flush(), Failure(message=_error_text(err), aborted=aborted)]
        elif ev.type == "session.idle":
            return [*self._flush(), Idle()]
        return []


class OpenCodeAgent:
    """A RunningAgent: one OpenCode server and one session in it, with its event stream open."""

    def __init__(
        self,
        service: OpenCodeService | None,
        client: OpenCodeClient,
        opencode_session_id: str,
        spec: AgentSpec | None,
        pid: int | None,
        server_url: str,
    ) -> None:
        self.service = service
        self.client = client
        self.opencode_session_id = opencode_session_id
        self.spec = spec
        self.pid = pid
        self.server_url = server_url
        self._stack = contextlib.AsyncExitStack()
        self._stream: Any = None

    async def open_events(self) -> None:
        self._stream = await self._stack.enter_async_context(self.client.events())

    async def prompt(self, text: str) -> None:
        spec = self.spec
        await self.client.prompt_async(
            self.opencode_session_id,
            text,
            model=spec.model if spec else None,
            system=spec.system if spec else None,
        )

    async def events(self) -> AsyncIterator[AgentEvent]:
        mapper = EventMapper(self.opencode_session_id)
        async for ev in self._stream:
            for out in mapper.map(ev):
                yield out

    async def reply_permission(self, permission_id: str, reply: str) -> None:
        await self.client.reply_permission(permission_id, reply)  # type: ignore[arg-type]

    async def abort(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.abort(self.opencode_session_id), 5)

    async def alive(self) -> bool:
        try:
            await self.client.health(timeout=3)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        if self.service is not None:
            await self.service.stop(abort_sessions=False)
        else:
            await self.client.aclose()


class OpenCodeBackend:
    """Starts one OpenCode server per agent under `state_root/<session id>`."""

    def __init__(
        self,
        state_root: Path,
        *,
        model_base_url: str | None = None,
        provider: Mapping[str, Any] | None = None,
        model: str | None = None,
        isolated: bool = True,
        npm_cache: Path | None = None,
        stop_grace: float = 3.0,
    ) -> None:
        self.state_root = Path(state_root)
        self.model_base_url = model_base_url
        self.provider = provider
        self.model = model
        self.isolated = isolated
        self.npm_cache = npm_cache
        self.stop_grace = stop_grace
        self._discovery: OpenCodeService | None = None
        self._discovery_lock = asyncio.Lock()
        #: OpenCode servers are reported to grow and wedge when they live long: recycle past this size
        self.max_rss_bytes = 1_500_000_000
        self.recycled = 0

    def _config(self, permission: Mapping[str, Any] | None, mcp: Mapping[str, Any] | None) -> dict[str, Any]:
        return build_agent_config(
            model_base_url=self.model_base_url,
            provider=None if self.model_base_url else self.provider,
            model=self.model,
            permission=permission,
            mcp=mcp,
        )

    def _service(self, workdir: str, state_dir: Path, config: dict[str, Any]) -> OpenCodeService:
        return OpenCodeService(
            workdir,
            state_dir,
            config=config,
            mode="isolated" if self.isolated else "production",
            npm_cache=self.npm_cache,
            stop_grace=self.stop_grace,
        )

    async def start(self, spec: AgentSpec) -> OpenCodeAgent:
        mcp = {MCP_NAME: remote_mcp(spec.mcp_url, spec.mcp_token)} if spec.mcp_url else None
        state_dir = self.state_root / spec.session_id
        service = self._service(spec.project_directory, state_dir, self._config(spec.permission, mcp))
        await service.start()
        agent: OpenCodeAgent | None = None
        try:
            client = service.client
            info = service.info
            agent = OpenCodeAgent(service, client, "", spec, info.pid, info.url)
            # the event stream opens while the session is created: both must be ready before the prompt
            session, _ = await asyncio.gather(
                client.create_session(
                    spec.title, metadata=spec.metadata, permission=session_permission_rules(spec.permission)
                ),
                agent.open_events(),
            )
            agent.opencode_session_id = session["id"]
            _write_private(
                state_dir / "server.json",
                {
                    "url": info.url,
                    "pid": info.pid,
                    "password": info.password,
                    "opencode_session_id": session["id"],
                },
            )
        except BaseException:
            if agent is not None:
                await agent.close()  # closes the event stream and stops the server
            else:
                await service.stop(abort_sessions=False)
            raise
        return agent

    async def attach(
        self, server_url: str, opencode_session_id: str, pid: int | None, session_id: str
    ) -> OpenCodeAgent | None:
        """Re-attach to a server that outlived a restart of the engine (None when it is gone)."""
        creds_path = self.state_root / session_id / "server.json"
        try:
            creds = json.loads(creds_path.read_text())
        except (OSError, ValueError):
            return None
        if pid is None or not Path(f"/proc/{pid}").exists():
            return None
        client = OpenCodeClient(creds["url"], creds["password"])
        try:
            await client.health(timeout=3)
            await client.get_session(opencode_session_id)
        except Exception:
            await client.aclose()
            return None
        agent = OpenCodeAgent(None, client, opencode_session_id, None, pid, creds["url"])
        await agent.open_events()
        return agent

    async def _healthy(self, svc: OpenCodeService) -> bool:
        """A long-lived server misbehaves when it died, stops answering, or grows past its memory ceiling."""
        if not svc.is_alive():
            return False
        rss = svc.rss_bytes()
        if rss is not None and rss > self.max_rss_bytes:
            return False
        try:
            await asyncio.wait_for(svc.health(), 5)
        except Exception:
            return False
        return True

    async def _discovery_service(self, project_directory: str | None) -> OpenCodeService:
        async with self._discovery_lock:
            if self._discovery is not None and not await self._healthy(self._discovery):
                self.recycled += 1
                await self._discovery.stop(abort_sessions=False)  # recycled: a fresh one starts below
                self._discovery = None
            if self._discovery is None:
                workdir = (
                    project_directory
                    if project_directory and os.path.isdir(project_directory)
                    else str(self.state_root)
                )
                self.state_root.mkdir(parents=True, exist_ok=True)
                svc = self._service(workdir, self.state_root / "_discovery", self._config(None, None))
                await svc.start()
                self._discovery = svc
            return self._discovery

    async def agents(self, project_directory: str | None) -> list[dict[str, Any]]:
        svc = await self._discovery_service(project_directory)
        return await svc.client.agents()

    async def providers(self) -> dict[str, Any]:
        svc = await self._discovery_service(None)
        return await svc.client.providers()

    async def close(self) -> None:
        if self._discovery is not None:
            await self._discovery.stop(abort_sessions=False)
            self._discovery = None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
