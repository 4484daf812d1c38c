"""One agent on `opencode serve`: its server (ours, or adopted after a restart), its session, and its
event stream mapped to the engine's events (``opencode_events.py``); the RunningAgent of
``engine/backend.py``. ``OpenCodeBackend`` (``opencode_backend.py``) makes them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from engine.backend import AgentEvent, AgentSpec
from engine.opencode_adopted import AdoptedServer
from engine.opencode_client import OpenCodeClient, OpenCodeEvent
from engine.opencode_events import EventMapper, backlog
from engine.opencode_runner import OpenCodeService


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
        adopted: AdoptedServer | None = None,
    ) -> None:
        self.service = service
        self.client = client
        self.opencode_session_id = opencode_session_id
        self.spec = spec
        self.pid = pid
        self.server_url = server_url
        #: the server, when it outlived the engine that started it (re-attached): stopped on close
        self.adopted = adopted
        self._stack = contextlib.AsyncExitStack()
        self._stream: Any = None
        self._mapper: EventMapper | None = None
        self._backlog: list[OpenCodeEvent] = []
        #: tidies the agent's state folders once its server is gone (set by the backend)
        self.tidy: Callable[[], None] | None = None

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

    async def catch_up(self, *, calls: Iterable[str], messages: Iterable[str]) -> None:
        """After a restart (the event stream open already): what the session did while no engine
        listened is reported first by ``events()``, except the tool calls and messages recorded
        already; a turn that ended meanwhile ends there too."""
        mapper = self._mapper = EventMapper(self.opencode_session_id)
        mapper.seen(calls=calls, messages=messages)
        sid = self.opencode_session_id
        history, status, pending = await asyncio.gather(
            self.client.messages(sid), self.client.session_status(), self.client.permissions()
        )
        self._backlog = backlog(sid, history, sid in status, pending)

    async def events(self) -> AsyncIterator[AgentEvent]:
        mapper = self._mapper or EventMapper(self.opencode_session_id)
        backlog_, self._backlog = self._backlog, []
        for ev in backlog_:
            for out in mapper.map(ev):
                yield out
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
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self.service is not None:
            await self.service.stop(abort_sessions=False)
        elif self.adopted is not None:
            await self.adopted.stop()
        if self.tidy is not None:
            tidy, self.tidy = self.tidy, None
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tidy)
