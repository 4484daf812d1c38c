"""What the scripted model says: steps, scripts, and the book that hands steps out per conversation.

A *step* is one model reply (one HTTP request answered). A conversation is picked by a *marker*: a
substring looked for in the request's user and system messages, newest message first, so several
agents talking to one server at once each get their own queue. Requests that match no marker take
steps from the default queue. An empty queue answers with the script's ``fallback_text`` ("done."),
so an agent always finishes instead of waiting for a reply nobody scripted.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Usage(BaseModel):
    """Token counts reported for one reply; ``total_tokens`` is derived."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    delay: float = Field(0.0, ge=0, description="seconds before the first byte (a slow reply)")
    usage: Usage | None = Field(None, description="reported usage; default: estimated from lengths")


class TextStep(_Step):
    """A whole text reply, sent as one content chunk."""

    kind: Literal["text"] = "text"
    text: str


class StreamStep(_Step):
    """A text reply sent as several content chunks, ``chunk_delay`` seconds apart."""

    kind: Literal["stream"] = "stream"
    chunks: list[str] = Field(min_length=1)
    chunk_delay: float = Field(0.0, ge=0)

    @classmethod
    def of(cls, text: str, *, size: int = 8, chunk_delay: float = 0.0, **kw: Any) -> StreamStep:
        """Cut ``text`` into chunks of ``size`` characters."""
        chunks = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        return cls(chunks=chunks, chunk_delay=chunk_delay, **kw)


class ToolCall(BaseModel):
    """One function call: an OpenCode tool (``write``, ``bash``) or an MCP one (``ledger_spawn_agent``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class ToolCallStep(_Step):
    """A reply that asks the client to run tools (``finish_reason: "tool_calls"``)."""

    kind: Literal["tool_call"] = "tool_call"
    calls: list[ToolCall] = Field(min_length=1)
    text: str = Field("", description="optional text streamed before the calls")

    @classmethod
    def of(cls, name: str, arguments: Mapping[str, Any] | None = None, **kw: Any) -> ToolCallStep:
        return cls(calls=[ToolCall(name=name, arguments=dict(arguments or {}))], **kw)


class ErrorStep(_Step):
    """An HTTP error answer instead of a completion."""

    kind: Literal["error"] = "error"
    status: int = Field(500, ge=400, le=599)
    body: Any = Field(
        default_factory=lambda: {"error": {"message": "scripted failure", "type": "server_error"}}
    )


class HangStep(_Step):
    """A reply that never ends: the stream stays open until the client leaves or the server stops.

    Every ``keepalive`` seconds an SSE comment line is sent (0 sends nothing at all).
    """

    kind: Literal["hang"] = "hang"
    keepalive: float = Field(1.0, ge=0)


class EchoToolResultStep(_Step):
    """A text reply quoting the newest ``tool`` message of the request, so tests see what a tool returned."""

    kind: Literal["echo_tool_result"] = "echo_tool_result"
    prefix: str = "tool result: "


Step = Annotated[
    TextStep | StreamStep | ToolCallStep | ErrorStep | HangStep | EchoToolResultStep,
    Field(discriminator="kind"),
]
_steps_adapter: TypeAdapter[list[Step]] = TypeAdapter(list[Step])


def parse_steps(raw: Iterable[Any]) -> list[Step]:
    """Steps from model objects or their JSON-like dicts."""
    return _steps_adapter.validate_python(list(raw))


class Conversation(BaseModel):
    """The queue of steps for requests whose user or system messages contain ``match``."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(min_length=1)
    steps: list[Step] = Field(default_factory=list)


class Script(BaseModel):
    """A whole script, as kept in a JSON file for ``python -m engine.scripted_model --script``."""

    model_config = ConfigDict(extra="forbid")

    default: list[Step] = Field(default_factory=list)
    conversations: list[Conversation] = Field(default_factory=list)
    fallback_text: str = "done."

    @classmethod
    def from_file(cls, path: str | Path) -> Script:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of an OpenAI chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


class ScriptBook:
    """Thread-safe queues of steps, one per marker plus a default one."""

    def __init__(self, script: Script | None = None) -> None:
        self._lock = threading.Lock()
        self._default: deque[Step] = deque()
        self._by_marker: dict[str, deque[Step]] = {}
        self.fallback_text = "done."
        if script is not None:
            self.load(script)

    def load(self, script: Script) -> None:
        """Append a script's queues to the current ones."""
        with self._lock:
            self.fallback_text = script.fallback_text
            self._default.extend(script.default)
            for conv in script.conversations:
                self._by_marker.setdefault(conv.match, deque()).extend(conv.steps)

    def add(self, steps: Iterable[Any], match: str | None = None) -> None:
        """Append steps to the queue of ``match`` (the default queue when None)."""
        parsed = parse_steps(steps)
        with self._lock:
            queue = self._default if match is None else self._by_marker.setdefault(match, deque())
            queue.extend(parsed)

    def pending(self, match: str | None = None) -> int:
        """How many steps are still queued for ``match`` (the default queue when None)."""
        with self._lock:
            queue = self._default if match is None else self._by_marker.get(match, ())
            return len(queue)

    def conversation_of(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The marker found in the newest user/system message holding one, else None."""
        with self._lock:
            markers = list(self._by_marker)
        for message in reversed(messages):
            if message.get("role") not in ("user", "system"):
                continue
            text = message_text(message)
            for marker in markers:
                if marker in text:
                    return marker
        return None

    def take(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, Step | None]:
        """Pop the next step for the conversation these messages belong to (None when its queue is empty)."""
        marker = self.conversation_of(messages)
        with self._lock:
            queue = self._default if marker is None else self._by_marker[marker]
            return marker, (queue.popleft() if queue else None)
