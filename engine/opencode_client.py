"""Async client for one `opencode serve` (v1 routes), with an SSE event reader.

Every ``httpx`` error is translated here into the ``engine.errors`` tree. Event streams are opened
with ``async with client.events() as events:`` and always closed on exit; a background task
feeds them, so ``await events.next(timeout=...)`` can time out without losing the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import httpx
from httpx_sse import EventSource

from engine.errors import OpenCodeHTTPError, OpenCodeTimeout

NOISE_EVENT_TYPES = frozenset(
    {"plugin.added", "catalog.updated", "integration.updated", "reference.updated", "server.connected"}
)
"""Start-up chatter that says nothing about sessions; dropped unless ``include_noise=True``."""

PermissionReply = Literal["once", "always", "reject"]


@dataclass(frozen=True)
class OpenCodeEvent:
    """One ``data:`` line of ``GET /event``: ``{id, type, properties}``."""

    type: str
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def session_id(self) -> str | None:
        """The session the event is about, wherever OpenCode put it."""
        props = self.properties
        for holder in (props, props.get("info"), props.get("part")):
            if isinstance(holder, Mapping) and isinstance(holder.get("sessionID"), str):
                return str(holder["sessionID"])
        return None


class EventStream:
    """Parsed events of one open ``GET /event`` stream."""

    _END = object()

    def __init__(self, *, include_noise: bool, heartbeats: bool) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._include_noise = include_noise
        self._heartbeats = heartbeats
        self._closed = False
        self._pushback: list[OpenCodeEvent] = []

    def _wanted(self, event: OpenCodeEvent) -> bool:
        if event.type == "server.heartbeat":
            return self._heartbeats
        return self._include_noise or event.type not in NOISE_EVENT_TYPES

    async def _pump(self, source: EventSource) -> None:
        try:
            async for sse in source.aiter_sse():
                try:
                    data = sse.json()
                except ValueError:
                    continue
                if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                    continue
                props = data.get("properties")
                event = OpenCodeEvent(data["type"], props if isinstance(props, dict) else {}, data.get("id"))
                self._queue.put_nowait(event)
        except httpx.HTTPError as exc:
            self._queue.put_nowait(OpenCodeHTTPError("GET", "/event", None, reason=f"stream broke: {exc!r}"))
        finally:
            self._queue.put_nowait(self._END)

    async def _next_raw(self, timeout: float | None) -> OpenCodeEvent:
        if self._pushback:
            return self._pushback.pop()
        if self._closed:
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise OpenCodeTimeout("the next OpenCode event", timeout or 0.0) from None
        if item is self._END:
            self._closed = True
            raise StopAsyncIteration
        if isinstance(item, Exception):
            self._closed = True
            raise item
        assert isinstance(item, OpenCodeEvent)
        return item

    async def next(self, timeout: float | None = None) -> OpenCodeEvent:
        """The next wanted event; OpenCodeTimeout after ``timeout`` s, StopAsyncIteration at the end."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                event = await self._next_raw(remaining)
            except OpenCodeTimeout:
                raise OpenCodeTimeout("the next OpenCode event", timeout or 0.0) from None
            if self._wanted(event):
                return event

    async def wait_for(self, predicate: Callable[[OpenCodeEvent], bool], timeout: float) -> OpenCodeEvent:
        """Skip events until one satisfies ``predicate``; OpenCodeTimeout after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise OpenCodeTimeout("an OpenCode event matching the condition", timeout)
            try:
                event = await self.next(remaining)
            except OpenCodeTimeout:
                raise OpenCodeTimeout("an OpenCode event matching the condition", timeout) from None
            except StopAsyncIteration:
                raise OpenCodeHTTPError("GET", "/event", None, reason="stream ended") from None
            if predicate(event):
                return event

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> OpenCodeEvent:
        return await self.next()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client. httpx otherwise builds one per client, loading the CA bundle
    (about 25 ms of CPU, on the spawn path), though OpenCode serves plain HTTP on loopback."""
    return httpx.create_ssl_context()


def _model_ref(model: str | Mapping[str, str] | None) -> dict[str, str] | None:
    if model is None or isinstance(model, Mapping):
        return dict(model) if model is not None else None
    provider, _, model_id = model.partition("/")
    if not model_id:
        raise ValueError(f"model is not 'provider/model' (got {model!r})")
    return {"providerID": provider, "modelID": model_id}


class OpenCodeClient:
    """The v1 API of one server, over Basic auth. Use ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        base_url: str,
        password: str | None,
        *,
        username: str = "opencode",
        timeout: float = 30.0,
        directory: str | None = None,
    ):
        """``directory``: the project every request works in (``?directory=``, OpenCode's instance for
        that folder: sessions, events, MCP servers, permissions); None = the server's own cwd."""
        auth = httpx.BasicAuth(username, password) if password is not None else None
        self.base_url = base_url
        self.directory = directory
        self._timeout = timeout
        params = {"directory": directory} if directory is not None else None
        self._http = httpx.AsyncClient(
            base_url=base_url, auth=auth, timeout=timeout, params=params, verify=_tls()
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        wait = timeout if timeout is not None else self._timeout
        try:
            response = await self._http.request(method, path, json=json, params=params, timeout=wait)
        except httpx.TimeoutException as exc:
            raise OpenCodeTimeout(f"OpenCode {method} {path}", wait) from exc
        except httpx.HTTPError as exc:
            raise OpenCodeHTTPError(method, path, None, reason=repr(exc)) from exc
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise OpenCodeHTTPError(method, path, response.status_code, body)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # -- server -----------------------------------------------------------------------------
    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /global/health`` -> ``{"healthy": true, "version": "1.18.33"}``."""
        return dict(await self._call("GET", "/global/health", timeout=timeout))

    async def agents(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/agent"))

    async def providers(self) -> dict[str, Any]:
        """``GET /config/providers`` -> ``{providers: [...], default: {...}}``."""
        return dict(await self._call("GET", "/config/providers"))

    async def dispose_instance(self) -> None:
        """``POST /instance/dispose``: reload agents and config files on the next request."""
        await self._call("POST", "/instance/dispose")

    # -- sessions ---------------------------------------------------------------------------
    async def create_session(
        self,
        title: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        permission: Sequence[Mapping[str, str]] | None = None,
        parent_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /session``; a title is required so OpenCode does not spend a model call on one."""
        if not title:
            raise ValueError("a session needs a title")
        body: dict[str, Any] = {"title": title}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if permission is not None:
            body["permission"] = [dict(rule) for rule in permission]
        if parent_id is not None:
            body["parentID"] = parent_id
        return dict(await self._call("POST", "/session", json=body))

    async def delete_session(self, session_id: str) -> bool:
        return bool(await self._call("DELETE", f"/session/{session_id}"))

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/session/{session_id}"))

    async def list_sessions(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/session"))

    async def children(self, session_id: str) -> list[dict[str, Any]]:
        return list(await self._call("GET", f"/session/{session_id}/children"))

    async def session_status(self) -> dict[str, dict[str, Any]]:
        """``{session_id: {"type": "busy" | "retry"}}``; idle sessions are left out."""
        return dict(await self._call("GET", "/session/status"))

    async def messages(self, session_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """``[{info, parts}]``, oldest first (the newest ``limit`` when given)."""
        params = {"limit": limit} if limit is not None else None
        return list(await self._call("GET", f"/session/{session_id}/message", params=params))

    @staticmethod
    def _prompt_body(
        text: str,
        agent: str | None,
        model: str | Mapping[str, str] | None,
        system: str | None,
        tools: Mapping[str, bool] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if agent is not None:
            body["agent"] = agent
        if (ref := _model_ref(model)) is not None:
            body["model"] = ref
        if system is not None:
            body["system"] = system
        if tools is not None:
            body["tools"] = dict(tools)
        return body

    async def prompt(
        self,
        session_id: str,
        text: str,
        *,
        agent: str | None = None,
        model: str | Mapping[str, str] | None = None,
        system: str | None = None,
        tools: Mapping[str, bool] | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """``POST /session/{id}/message``: run a turn, return the last assistant ``{info, parts}``."""
        body = self._prompt_body(text, agent, model, system, tools)
        return dict(await self._call("POST", f"/session/{session_id}/message", json=body, timeout=timeout))

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        agent: str | None = None,
        model: str | Mapping[str, str] | None = None,
        system: str | None = None,
        tools: Mapping[str, bool] | None = None,
    ) -> None:
        """``POST /session/{id}/prompt_async`` (204): accepted only; follow progress in events."""
        body = self._prompt_body(text, agent, model, system, tools)
        await self._call("POST", f"/session/{session_id}/prompt_async", json=body)

    async def abort(self, session_id: str) -> bool:
        return bool(await self._call("POST", f"/session/{session_id}/abort"))

    # -- MCP servers ------------------------------------------------------------------------
    async def add_mcp(self, name: str, config: Mapping[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        """``POST /mcp``: connect an MCP server at run time; returns ``{name: {status, error?}}``."""
        body = {"name": name, "config": dict(config)}
        return dict(await self._call("POST", "/mcp", json=body, timeout=timeout))

    async def mcp_status(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/mcp"))

    # -- permissions ------------------------------------------------------------------------
    async def permissions(self) -> list[dict[str, Any]]:
        """Pending questions: ``[{id, sessionID, permission, patterns, tool, ...}]``."""
        return list(await self._call("GET", "/permission"))

    async def reply_permission(
        self, permission_id: str, reply: PermissionReply, *, message: str | None = None
    ) -> bool:
        if reply not in ("once", "always", "reject"):
            raise ValueError(f"permission reply is not once/always/reject (got {reply!r})")
        body: dict[str, Any] = {"reply": reply}
        if message is not None:
            body["message"] = message
        return bool(await self._call("POST", f"/permission/{permission_id}/reply", json=body))

    # -- events -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def events(
        self, *, include_noise: bool = False, heartbeats: bool = False, connect_timeout: float = 10.0
    ) -> AsyncIterator[EventStream]:
        """Subscribe to ``GET /event``; returns once ``server.connected`` arrived, closes on exit."""
        stream = EventStream(include_noise=include_noise, heartbeats=heartbeats)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        timeout = httpx.Timeout(connect_timeout, read=None)
        request = self._http.build_request("GET", "/event", headers=headers, timeout=timeout)
        try:
            response = await asyncio.wait_for(self._http.send(request, stream=True), connect_timeout)
        except TimeoutError as exc:
            raise OpenCodeTimeout("the OpenCode event stream to open", connect_timeout) from exc
        except httpx.HTTPError as exc:
            raise OpenCodeHTTPError("GET", "/event", None, reason=repr(exc)) from exc
        pump: asyncio.Task[None] | None = None
        try:
            if response.status_code >= 400:
                raise OpenCodeHTTPError(
                    "GET", "/event", response.status_code, (await response.aread()).decode()
                )
            pump = asyncio.create_task(stream._pump(EventSource(response)), name="opencode-events")
            first = await stream._next_raw(connect_timeout)
            if first.type != "server.connected":
                stream._pushback.append(first)
            yield stream
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            await response.aclose()
