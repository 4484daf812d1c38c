"""OpenCode's events of one session, mapped to the engine's normalised AgentEvents."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.backend import AgentEvent, Failure, Idle, Output, PermissionAsk, ToolUse
from engine.opencode_client import OpenCodeEvent
from schemas.events import Tokens


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
        #: permission questions reported already (a backlog and the live stream may both hold one)
        self.asked: set[str] = set()

    def seen(self, *, calls: Iterable[str] = (), messages: Iterable[str] = ()) -> None:
        """Tool calls and messages recorded already (by an engine before a restart): not reported again."""
        self.done_tools.update(calls)
        self.done_messages.update(messages)

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
            if str(p.get("id")) in self.asked:
                return []
            self.asked.add(str(p.get("id")))
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


_NEVER_ANSWERED = {
    "name": "TurnLost",
    "data": {"message": "the session is idle and never answered: its turn was lost in the restart"},
}


def backlog(
    session_id: str,
    messages: Sequence[Mapping[str, Any]],
    busy: bool,
    permissions: Sequence[Mapping[str, Any]],
) -> list[OpenCodeEvent]:
    """The events that tell what a session did while no engine listened, from a snapshot of it:
    its messages (``GET /session/{id}/message``), whether it is still busy, and the questions
    pending (``GET /permission``). Fed to the session's EventMapper before its live events, they
    report what the mapper has not seen; a session that is no longer busy ends with the outcome of
    its turn (idle, or the error its last reply ended with)."""
    out: list[OpenCodeEvent] = []
    last: Mapping[str, Any] = {}
    for message in messages:
        info = message.get("info") or {}
        for part in message.get("parts") or ():
            out.append(OpenCodeEvent("message.part.updated", {"part": part}))
        out.append(OpenCodeEvent("message.updated", {"info": info}))
        if info.get("role") == "assistant":
            last = info
    out.extend(
        OpenCodeEvent("permission.asked", dict(p)) for p in permissions if p.get("sessionID") == session_id
    )
    if not busy:
        err = last.get("error") if last else _NEVER_ANSWERED
        if err is not None:
            out.append(OpenCodeEvent("session.error", {"sessionID": session_id, "error": err}))
        else:
            out.append(OpenCodeEvent("session.idle", {"sessionID": session_id}))
    return out
