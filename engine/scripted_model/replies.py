"""Turning a step into OpenAI chat-completion payloads: SSE chunks or one JSON body."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.scripted_model.steps import (
    EchoToolResultStep,
    Step,
    StreamStep,
    TextStep,
    ToolCall,
    ToolCallStep,
    Usage,
    message_text,
)


def estimate_tokens(chars: int) -> int:
    """About four characters a token, never zero."""
    return max(1, math.ceil(chars / 4))


def prompt_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """Characters of a request's messages: their text and the arguments of earlier tool calls."""
    total = 0
    for message in messages:
        total += len(message_text(message))
        for call in message.get("tool_calls") or ():
            total += len(str(call.get("function", {}).get("arguments", "")))
    return total


def last_tool_result(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The content of the newest ``tool`` message, or None when the request holds none."""
    for message in reversed(messages):
        if message.get("role") == "tool":
            return message_text(message)
    return None


@dataclass(frozen=True)
class Reply:
    """A completed reply: text pieces, tool calls (ids assigned) and the usage to report."""

    chunks: list[str]
    tool_calls: list[ToolCall]
    usage: Usage
    chunk_delay: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def build_reply(
    step: Step | None, messages: Sequence[Mapping[str, Any]], *, fallback_text: str, call_prefix: str
) -> Reply:
    """The reply a text-like step (or no step: the fallback text) gives to these messages."""
    calls: list[ToolCall] = []
    delay = 0.0
    match step:
        case None:
            chunks = [fallback_text]
        case TextStep():
            chunks = [step.text]
        case StreamStep():
            chunks, delay = list(step.chunks), step.chunk_delay
        case ToolCallStep():
            chunks = [step.text] if step.text else []
            calls = [
                c if c.id else c.model_copy(update={"id": f"{call_prefix}_{i}"})
                for i, c in enumerate(step.calls)
            ]
        case EchoToolResultStep():
            result = last_tool_result(messages)
            chunks = [step.prefix + (result if result is not None else "(no tool result)")]
        case _:
            raise TypeError(f"step kind {step.kind!r} has no completion reply")
    usage = step.usage if step is not None and step.usage is not None else None
    if usage is None:
        out_chars = sum(len(c) for c in chunks) + sum(
            len(c.name) + len(json.dumps(c.arguments)) for c in calls
        )
        usage = Usage(
            prompt_tokens=estimate_tokens(prompt_chars(messages)),
            completion_tokens=estimate_tokens(out_chars),
        )
    return Reply(chunks=chunks, tool_calls=calls, usage=usage, chunk_delay=delay)


class ChunkFactory:
    """``chat.completion.chunk`` objects sharing one id, model and creation time."""

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base, "choices": [choice]}

    def usage(self, usage: Usage) -> dict[str, Any]:
        return {**self._base, "choices": [], "usage": usage.as_openai()}


def stream_chunks(reply: Reply, factory: ChunkFactory) -> Iterator[tuple[dict[str, Any], float]]:
    """The SSE chunks of a reply, each with the delay to wait before sending it."""
    yield factory.delta({"role": "assistant", "content": ""}), 0.0
    for i, piece in enumerate(reply.chunks):
        yield factory.delta({"content": piece}), (reply.chunk_delay if i else 0.0)
    for index, call in enumerate(reply.tool_calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield factory.delta({"tool_calls": [head]}), 0.0
        args = json.dumps(call.arguments)
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            if part:
                yield factory.delta({"tool_calls": [{"index": index, "function": {"arguments": part}}]}), 0.0
    yield factory.delta({}, reply.finish_reason), 0.0
    yield factory.usage(reply.usage), 0.0


def completion_body(reply: Reply, completion_id: str, model: str, created: int) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` answer."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": reply.usage.as_openai(),
    }
