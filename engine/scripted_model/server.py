"""The scripted model's HTTP server (stdlib ``http.server``, one thread a connection).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (streaming SSE or one JSON body), and two
control routes for a model running as its own process: ``GET /_scripted/requests`` (the request log)
and ``POST /_scripted/script`` (append a :class:`Script`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from engine.scripted_model.replies import ChunkFactory, build_reply, completion_body, stream_chunks
from engine.scripted_model.steps import ErrorStep, HangStep, Script, ScriptBook


@dataclasses.dataclass
class RequestRecord:
    """One request the model received, and how its answer ended.

    ``step`` is the kind of step played (``"fallback"`` when the queue was empty, None for routes
    other than completions); ``outcome`` is ``pending``, ``completed``, ``error`` (scripted HTTP
    error), ``disconnected`` (the client left first) or ``stopped`` (the server stopped first).
    """

    seq: int
    method: str
    path: str
    body: Any
    received_at: float
    conversation: str | None = None
    step: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = "pending"
    finished_at: float | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []

    @property
    def is_completion(self) -> bool:
        return self.path.endswith("/chat/completions")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RequestLog:
    """Thread-safe request records; readers get snapshots."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._records: list[RequestRecord] = []

    def open(self, method: str, path: str, body: Any) -> RequestRecord:
        with self._cond:
            record = RequestRecord(len(self._records) + 1, method, path, body, time.time())
            self._records.append(record)
            self._cond.notify_all()
            return record

    def update(self, record: RequestRecord, **changes: Any) -> None:
        with self._cond:
            for key, value in changes.items():
                setattr(record, key, value)
            if changes.get("outcome", "pending") != "pending":
                record.finished_at = time.time()
            self._cond.notify_all()

    def snapshot(self) -> list[RequestRecord]:
        with self._cond:
            return [dataclasses.replace(r) for r in self._records]

    def wait_until(
        self, predicate: Callable[[list[RequestRecord]], bool], timeout: float
    ) -> list[RequestRecord]:
        """Wait until ``predicate(snapshot)`` holds; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snap = [dataclasses.replace(r) for r in self._records]
                if predicate(snap):
                    return snap
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"request log condition not met after {timeout}s ({len(snap)} requests)"
                    )
                self._cond.wait(remaining)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model: ScriptedModel


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record."""

    def setup(self) -> None:
        super().setup()
        self.server.model._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.model._track(self.connection, add=False)

    # -- routing ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        model = self.server.model
        if path.startswith("/v1/"):
            status = 200 if path == "/v1/models" else 404
            model._log.update(model._log.open("GET", path, None), status=status, outcome="completed")
        if path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": model.model_id, "object": "model", "created": 0, "owned_by": "scripted"}],
                },
            )
        elif path == "/_scripted/requests":
            self._json(200, [r.as_dict() for r in model.requests])
        else:
            self._json(404, {"error": {"message": f"no route GET {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if path == "/v1/chat/completions" and isinstance(body, dict):
            self._complete(body)
        elif path == "/_scripted/script":
            self.server.model.load(Script.model_validate(body))
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": {"message": f"no route POST {path}", "type": "not_found"}})

    # -- completions ------------------------------------------------------------------------
    def _complete(self, body: dict[str, Any]) -> None:
        model = self.server.model
        log = model._log
        record = log.open("POST", "/v1/chat/completions", body)
        messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
        marker, step = model.book.take(messages)
        stream = bool(body.get("stream"))
        log.update(record, conversation=marker, step=step.kind if step else "fallback", stream=stream)
        if step is not None and step.delay and (why := self._pause(step.delay)):
            log.update(record, outcome=why)
            self.close_connection = True
            return
        if isinstance(step, ErrorStep):
            self._json(step.status, step.body)
            log.update(record, status=step.status, outcome="error")
            return
        if isinstance(step, HangStep):
            log.update(record, status=200 if stream else 0, outcome=self._hang(step, stream))
            self.close_connection = True
            return
        reply = build_reply(
            step, messages, fallback_text=model.book.fallback_text, call_prefix=f"call_{record.seq}"
        )
        completion_id, created = f"chatcmpl-scripted-{record.seq}", int(time.time())
        if not stream:
            self._json(200, completion_body(reply, completion_id, model.model_id, created))
            log.update(record, status=200, outcome="completed")
            return
        self._start_sse()
        factory = ChunkFactory(completion_id, model.model_id, created)
        outcome = self._send_events(
            (delay, f"data: {json.dumps(chunk)}\n\n") for chunk, delay in stream_chunks(reply, factory)
        )
        if outcome == "completed":
            outcome = self._send_events([(0.0, "data: [DONE]\n\n")])
        if outcome == "completed":
            outcome = "completed" if self._end_chunks() else "disconnected"
        else:
            self.close_connection = True
        log.update(record, status=200, outcome=outcome)

    def _hang(self, step: HangStep, stream: bool) -> str:
        if stream:
            self._start_sse()
        while True:
            why = self._pause(step.keepalive if step.keepalive > 0 else 3600.0)
            if why:
                return why
            if stream and step.keepalive > 0 and not self._chunk(b": keep-alive\n\n"):
                return "disconnected"

    def _send_events(self, events: Iterable[tuple[float, str]]) -> str:
        for delay, text in events:
            if delay and (why := self._pause(delay)):
                return why
            if not self._chunk(text.encode()):
                return "disconnected"
        return "completed"

    # -- low level --------------------------------------------------------------------------
    def _pause(self, seconds: float) -> str | None:
        """Sleep, but return ``stopped``/``disconnected`` as soon as the server stops or the client leaves."""
        deadline = time.monotonic() + seconds
        stopping = self.server.model._stopping
        while (remaining := deadline - time.monotonic()) > 0:
            if stopping.wait(min(0.05, remaining)):
                return "stopped"
            if self._client_gone():
                return "disconnected"
        return "stopped" if stopping.is_set() else None

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _end_chunks(self) -> bool:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True


class ScriptedModel:
    """An OpenAI-compatible model server playing a script, on 127.0.0.1 in a background thread.

    >>> with ScriptedModel() as model:
    ...     model.add([TextStep(text="hello")])
    ...     model.base_url  # give this to the OpenAI-compatible client
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_id: str = "scripted-1",
    ) -> None:
        self.book = ScriptBook(script)
        self.model_id = model_id
        self._address = (host, port)
        self._log = RequestLog()
        self._stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- script -----------------------------------------------------------------------------
    def add(self, steps: Iterable[Any], match: str | None = None) -> None:
        """Queue steps for the conversation marked ``match`` (the default queue when None)."""
        self.book.add(steps, match)

    def load(self, script: Script) -> None:
        self.book.load(script)

    # -- addresses --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("scripted model is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends in ``/v1``)."""
        return f"{self.url}/v1"

    # -- log --------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        return self._log.snapshot()

    @property
    def completions(self) -> list[RequestRecord]:
        return [r for r in self._log.snapshot() if r.is_completion]

    def wait_for_completions(
        self, count: int, *, finished: bool = False, conversation: str | None = None, timeout: float = 30.0
    ) -> list[RequestRecord]:
        """Wait for ``count`` completion requests (of one conversation, and finished, if asked)."""

        def chosen(snap: list[RequestRecord]) -> list[RequestRecord]:
            return [
                r
                for r in snap
                if r.is_completion
                and (conversation is None or r.conversation == conversation)
                and (not finished or r.outcome != "pending")
            ]

        return chosen(self._log.wait_until(lambda snap: len(chosen(snap)) >= count, timeout))

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("scripted model already started")
        self._stopping.clear()
        server = _Server(self._address, _Handler)
        server.model = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-model", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: open replies (slow, never-ending) end, connections close."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)
        self._server = self._thread = None

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
