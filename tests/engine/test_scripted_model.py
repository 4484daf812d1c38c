"""The scripted model server, driven over real HTTP with httpx."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from engine.scripted_model import (
    EchoToolResultStep,
    ErrorStep,
    HangStep,
    Script,
    ScriptedModel,
    StreamStep,
    TextStep,
    ToolCall,
    ToolCallStep,
    Usage,
)

pytestmark = pytest.mark.timeout(60)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def ask(model: ScriptedModel, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    """A non-streaming chat completion."""
    return httpx.post(f"{model.base_url}/chat/completions", json={"messages": messages, **body}, timeout=10)


def stream(model: ScriptedModel, messages: list[dict[str, Any]]) -> tuple[httpx.Response, list[Any]]:
    """A streaming chat completion: the response and its SSE payloads (dicts, then "[DONE]")."""
    with httpx.stream(
        "POST", f"{model.base_url}/chat/completions", json={"messages": messages, "stream": True}, timeout=10
    ) as response:
        text = response.read().decode()
    return response, parse_sse(text)


def parse_sse(text: str) -> list[Any]:
    events = [block for block in text.split("\n\n") if block.strip()]
    payloads: list[Any] = []
    for block in events:
        assert block.startswith("data: "), f"not an SSE data line: {block!r}"
        data = block.removeprefix("data: ")
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def content_of(chunks: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c["choices"]
    )


class TestModelsRoute:
    def test_lists_the_model(self, scripted_model: ScriptedModel) -> None:
        """GET /v1/models names the configured model id."""
        response = httpx.get(f"{scripted_model.base_url}/models")
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["data"]] == ["scripted-1"]

    def test_unknown_route_is_404(self, scripted_model: ScriptedModel) -> None:
        """Unknown routes answer 404 with an OpenAI-style error body."""
        response = httpx.get(f"{scripted_model.base_url}/nothing")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


class TestTextReplies:
    def test_non_streaming_text(self, scripted_model: ScriptedModel) -> None:
        """A text step answers a non-streaming request with one assistant message."""
        scripted_model.add([TextStep(text="hello there")])
        body = ask(scripted_model, [user("hi")]).json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello there"}
        assert body["choices"][0]["finish_reason"] == "stop"

    def test_streaming_sse_format(self, scripted_model: ScriptedModel) -> None:
        """A streamed reply is data-only SSE: content deltas, a finish chunk, a usage chunk, then [DONE]."""
        scripted_model.add([TextStep(text="hello there")])
        response, payloads = stream(scripted_model, [user("hi")])
        assert response.headers["content-type"] == "text/event-stream"
        assert payloads[-1] == "[DONE]"
        chunks = payloads[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert content_of(chunks) == "hello there"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == []
        assert set(chunks[-1]["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}

    def test_stream_step_sends_chunks_apart(self, scripted_model: ScriptedModel) -> None:
        """A stream step sends each chunk as its own delta, chunk_delay seconds apart."""
        scripted_model.add([StreamStep(chunks=["one ", "two ", "three"], chunk_delay=0.2)])
        started = time.monotonic()
        _, payloads = stream(scripted_model, [user("count")])
        elapsed = time.monotonic() - started
        deltas = [c["choices"][0]["delta"].get("content") for c in payloads[:-1] if c["choices"]]
        assert [d for d in deltas if d] == ["one ", "two ", "three"]
        assert elapsed >= 0.4

    def test_stream_step_of_cuts_text(self) -> None:
        """StreamStep.of cuts a text into chunks of the given size."""
        assert StreamStep.of("abcdefg", size=3).chunks == ["abc", "def", "g"]

    def test_slow_reply_waits_before_first_byte(self, scripted_model: ScriptedModel) -> None:
        """A step's delay holds back the whole answer, headers included."""
        scripted_model.add([TextStep(text="late", delay=0.5)])
        started = time.monotonic()
        assert ask(scripted_model, [user("hurry")]).json()["choices"][0]["message"]["content"] == "late"
        assert time.monotonic() - started >= 0.5


class TestToolCalls:
    def test_streamed_tool_call(self, scripted_model: ScriptedModel) -> None:
        """A tool-call step streams the call's id, name and JSON arguments and finishes with tool_calls."""
        args = {"filePath": "/tmp/x.txt", "content": "hi"}
        scripted_model.add([ToolCallStep(calls=[ToolCall(name="write", arguments=args, id="call_a")])])
        _, payloads = stream(scripted_model, [user("write it")])
        calls = [
            tc for c in payloads[:-1] if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])
        ]
        assert calls[0]["id"] == "call_a"
        assert calls[0]["function"]["name"] == "write"
        assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == args
        finishes = [c["choices"][0]["finish_reason"] for c in payloads[:-1] if c["choices"]]
        assert finishes[-1] == "tool_calls"

    def test_several_calls_keep_their_index(self, scripted_model: ScriptedModel) -> None:
        """Several calls in one step stream under indexes 0, 1, ... with generated ids."""
        scripted_model.add(
            [
                ToolCallStep(
                    calls=[
                        ToolCall(name="ledger_spawn_agent", arguments={"role": "a"}),
                        ToolCall(name="bash", arguments={"command": "ls"}),
                    ]
                )
            ]
        )
        _, payloads = stream(scripted_model, [user("go")])
        heads = [
            tc
            for c in payloads[:-1]
            if c["choices"]
            for tc in c["choices"][0]["delta"].get("tool_calls", [])
            if "id" in tc
        ]
        assert [(h["index"], h["function"]["name"]) for h in heads] == [
            (0, "ledger_spawn_agent"),
            (1, "bash"),
        ]
        assert heads[0]["id"] != heads[1]["id"]

    def test_non_streaming_tool_call(self, scripted_model: ScriptedModel) -> None:
        """A non-streaming tool call comes back as message.tool_calls with JSON-encoded arguments."""
        scripted_model.add([ToolCallStep.of("bash", {"command": "echo hi"}, text="running")])
        choice = ask(scripted_model, [user("go")]).json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "running"
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "bash"
        assert json.loads(call["function"]["arguments"]) == {"command": "echo hi"}


class TestErrorsAndEcho:
    def test_http_error_step(self, scripted_model: ScriptedModel) -> None:
        """An error step answers with its status and body."""
        scripted_model.add([ErrorStep(status=429, body={"error": {"message": "slow down"}})])
        response = ask(scripted_model, [user("hi")], stream=True)
        assert response.status_code == 429
        assert response.json() == {"error": {"message": "slow down"}}
        assert scripted_model.completions[-1].outcome == "error"

    def test_echo_quotes_the_newest_tool_result(self, scripted_model: ScriptedModel) -> None:
        """An echo step quotes the newest tool message of the request."""
        scripted_model.add([EchoToolResultStep(prefix="got: ")])
        messages = [
            user("go"),
            {"role": "tool", "tool_call_id": "c1", "content": "old"},
            {"role": "assistant", "content": "", "tool_calls": []},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "new result"}]},
        ]
        _, payloads = stream(scripted_model, messages)
        assert content_of(payloads[:-1]) == "got: new result"

    def test_echo_without_tool_result(self, scripted_model: ScriptedModel) -> None:
        """An echo step with no tool message in the request says so."""
        scripted_model.add([EchoToolResultStep()])
        assert (
            ask(scripted_model, [user("go")])
            .json()["choices"][0]["message"]["content"]
            .endswith("(no tool result)")
        )


class TestUsage:
    def test_default_usage_is_estimated_from_lengths(self, scripted_model: ScriptedModel) -> None:
        """Without scripted usage, tokens are about a quarter of the characters, never zero."""
        scripted_model.add([TextStep(text="x" * 41)])
        prompt = "y" * 400
        usage = ask(scripted_model, [{"role": "system", "content": "s" * 100}, user(prompt)]).json()["usage"]
        assert usage == {"prompt_tokens": 125, "completion_tokens": math.ceil(41 / 4), "total_tokens": 136}

    def test_scripted_usage_is_reported_as_is(self, scripted_model: ScriptedModel) -> None:
        """A step's usage is reported exactly, streamed or not."""
        usage = Usage(prompt_tokens=1000, completion_tokens=50)
        scripted_model.add([TextStep(text="a", usage=usage), TextStep(text="b", usage=usage)])
        assert ask(scripted_model, [user("go")]).json()["usage"]["total_tokens"] == 1050
        _, payloads = stream(scripted_model, [user("go")])
        assert payloads[-2]["usage"] == {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}


class TestConversations:
    def test_marker_picks_the_queue(self, scripted_model: ScriptedModel) -> None:
        """Requests carrying a marker get that conversation's steps; others get the default queue."""
        scripted_model.add([TextStep(text="for A")], match="AGENT-A")
        scripted_model.add([TextStep(text="for B")], match="AGENT-B")
        scripted_model.add([TextStep(text="default")])

        def said(text: str) -> str:
            return str(ask(scripted_model, [user(text)]).json()["choices"][0]["message"]["content"])

        assert said("task AGENT-B") == "for B"
        assert said("no marker here") == "default"
        assert said("task AGENT-A") == "for A"
        assert [r.conversation for r in scripted_model.completions] == ["AGENT-B", None, "AGENT-A"]

    def test_empty_queue_says_done(self, scripted_model: ScriptedModel) -> None:
        """A conversation whose queue is empty gets the fallback text instead of the default queue's steps."""
        scripted_model.add([TextStep(text="one")], match="M1")
        scripted_model.add([TextStep(text="default")])
        replies = [
            ask(scripted_model, [user("M1")]).json()["choices"][0]["message"]["content"] for _ in range(2)
        ]
        assert replies == ["one", "done."]
        assert scripted_model.completions[-1].step == "fallback"
        assert scripted_model.book.pending() == 1

    def test_marker_in_system_message_counts(self, scripted_model: ScriptedModel) -> None:
        """A marker in a system message picks the conversation too."""
        scripted_model.add([TextStep(text="sys")], match="SYS-MARK")
        messages = [{"role": "system", "content": [{"type": "text", "text": "you are SYS-MARK"}]}, user("hi")]
        assert ask(scripted_model, messages).json()["choices"][0]["message"]["content"] == "sys"

    def test_newest_message_wins_and_tool_output_is_ignored(self, scripted_model: ScriptedModel) -> None:
        """The newest user/system message holding a marker decides; tool and assistant text never do."""
        scripted_model.add([TextStep(text="old")], match="OLD")
        scripted_model.add([TextStep(text="new")], match="NEW")
        messages = [
            user("first OLD"),
            user("then NEW"),
            {"role": "assistant", "content": "OLD"},
            {"role": "tool", "tool_call_id": "c", "content": "OLD"},
        ]
        assert ask(scripted_model, messages).json()["choices"][0]["message"]["content"] == "new"

    def test_concurrent_conversations_keep_their_scripts(self, scripted_model: ScriptedModel) -> None:
        """Many agents asking at once each get their own steps, in order."""
        for n in range(6):
            scripted_model.add(
                [TextStep(text=f"{n}-first", delay=0.1), TextStep(text=f"{n}-second")], match=f"A{n}:"
            )
        results: dict[int, list[str]] = {}

        def agent(n: int) -> None:
            results[n] = [
                ask(scripted_model, [user(f"I am A{n}:")]).json()["choices"][0]["message"]["content"]
                for _ in range(2)
            ]

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {n: [f"{n}-first", f"{n}-second"] for n in range(6)}


class TestNeverEndingReply:
    def test_hang_ends_when_the_server_stops(self) -> None:
        """A hanging stream sends only keep-alives until stop(), which ends it promptly."""
        model = ScriptedModel().start()
        model.add([HangStep(keepalive=0.1)])
        received: list[bytes] = []
        ended = threading.Event()

        def client() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{model.base_url}/chat/completions",
                    json={"messages": [user("hi")], "stream": True},
                    timeout=30,
                ) as response:
                    for chunk in response.iter_raw():
                        received.append(chunk)
            except httpx.HTTPError:
                pass
            ended.set()

        thread = threading.Thread(target=client)
        thread.start()
        model.wait_for_completions(1)
        assert not ended.wait(0.6), "a never-ending reply ended by itself"
        assert b"".join(received).count(b": keep-alive") >= 2
        assert b"data:" not in b"".join(received)
        started = time.monotonic()
        model.stop()
        assert ended.wait(5)
        thread.join()
        assert time.monotonic() - started < 3
        assert model.completions[0].outcome == "stopped"

    def test_hang_notices_the_client_leaving(self, scripted_model: ScriptedModel) -> None:
        """When the client disconnects, the hanging reply is logged as disconnected."""
        scripted_model.add([HangStep(keepalive=0)])
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{scripted_model.base_url}/chat/completions", json={"messages": [user("hi")]}, timeout=0.5
            )
        records = scripted_model.wait_for_completions(1, finished=True, timeout=5)
        assert records[0].outcome == "disconnected"


class TestRequestLog:
    def test_records_bodies_and_steps(self, scripted_model: ScriptedModel) -> None:
        """Every request is logged with its body, conversation, step kind, stream flag and outcome."""
        scripted_model.add([TextStep(text="a")], match="LOGME")
        stream(scripted_model, [user("LOGME please")])
        httpx.get(f"{scripted_model.base_url}/models")
        first, second = scripted_model.requests
        assert first.messages == [user("LOGME please")]
        assert (first.conversation, first.step, first.stream, first.status, first.outcome) == (
            "LOGME",
            "text",
            True,
            200,
            "completed",
        )
        assert (second.method, second.path) == ("GET", "/v1/models")

    def test_wait_for_completions_times_out(self, scripted_model: ScriptedModel) -> None:
        """Waiting for requests that never come raises TimeoutError."""
        with pytest.raises(TimeoutError):
            scripted_model.wait_for_completions(1, timeout=0.2)


class TestScripts:
    def test_script_validates_step_kinds(self) -> None:
        """A script with an unknown step kind is refused."""
        with pytest.raises(pydantic.ValidationError):
            Script.model_validate({"default": [{"kind": "poem", "text": "x"}]})

    def test_script_from_file(self, tmp_path: Path) -> None:
        """A JSON script file loads into default and per-marker queues."""
        path = tmp_path / "script.json"
        path.write_text(
            json.dumps(
                {
                    "default": [{"kind": "text", "text": "d"}],
                    "conversations": [
                        {"match": "X", "steps": [{"kind": "tool_call", "calls": [{"name": "write"}]}]}
                    ],
                    "fallback_text": "finished.",
                }
            )
        )
        script = Script.from_file(path)
        assert isinstance(script.conversations[0].steps[0], ToolCallStep)
        assert script.fallback_text == "finished."


class TestStandaloneProcess:
    def test_runs_as_a_process(self, tmp_path: Path) -> None:
        """`python -m engine.scripted_model` prints its URL, plays its script file and exits on SIGTERM."""
        path = tmp_path / "script.json"
        path.write_text(
            json.dumps({"conversations": [{"match": "P1", "steps": [{"kind": "text", "text": "from file"}]}]})
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.scripted_model", "--port", "0", "--script", str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            reply = httpx.post(
                f"{base_url}/chat/completions", json={"messages": [user("P1")]}, timeout=10
            ).json()
            assert reply["choices"][0]["message"]["content"] == "from file"
            root = base_url.removesuffix("/v1")
            added = {"conversations": [{"match": "P2", "steps": [{"kind": "text", "text": "added later"}]}]}
            assert httpx.post(f"{root}/_scripted/script", json=added).json() == {"ok": True}
            reply = httpx.post(
                f"{base_url}/chat/completions", json={"messages": [user("P2")]}, timeout=10
            ).json()
            assert reply["choices"][0]["message"]["content"] == "added later"
            log = httpx.get(f"{root}/_scripted/requests").json()
            assert [r["conversation"] for r in log] == ["P1", "P2"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
