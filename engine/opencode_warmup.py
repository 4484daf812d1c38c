"""Warm-up of a pooled `opencode serve`: one throwaway exchange, paid before any agent needs it.

Measured on OpenCode 1.18.33 (2 cores): a fresh server's first turn costs 2-3 CPU-seconds (tool
registry, system prompt, provider SDK, the project's instance and snapshot set-up), later turns
0.3-0.5. A pooled server pays that first turn here, in a throwaway session that is deleted
afterwards, so the agent's own session starts on a warm server.

The exchange never reaches the agent's model (no tokens spent, nothing sent to a provider): the
pooled server's config carries one more provider, ``ledger-warmup``, whose OpenAI-compatible
endpoint is ``WarmupResponder``, a loopback HTTP server in the engine that answers every
completion with a fixed "ok" and zero usage. The warm-up runs in the project directory the pool
expects next (the last one a spawn asked for), so that folder's OpenCode instance is ready too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from engine.opencode_client import OpenCodeClient
from engine.opencode_config import ModelCost, scripted_provider

log = logging.getLogger(__name__)

WARMUP_PROVIDER = "ledger-warmup"
WARMUP_MODEL = "warmup"
WARMUP_TITLE = "delegation-ledger warm-up (throwaway)"
WARMUP_PROMPT = "Warm-up exchange of delegation-ledger; reply ok."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            data = {"object": "list", "data": [{"id": WARMUP_MODEL, "object": "model", "owned_by": "ledger"}]}
            self._send(200, json.dumps(data).encode(), "application/json")
        else:
            self._send(404, b"{}", "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            request = {}
        self.server.completions += 1  # type: ignore[attr-defined]
        base = {"id": "warmup", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = WARMUP_MODEL
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not request.get("stream"):
            message = {"role": "assistant", "content": "ok"}
            body = {**base, "object": "chat.completion", "usage": usage}
            body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
            self._send(200, json.dumps(body).encode(), "application/json")
            return
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**base, "choices": [], "usage": usage},
        ]
        stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        self._send(200, stream, "text/event-stream")


class WarmupResponder:
    """The ``ledger-warmup`` provider's endpoint: loopback only, a daemon thread, fixed replies."""

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.completions = 0  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="warmup-responder", daemon=True
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the warm-up responder is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def completions(self) -> int:
        """How many completions it answered (every warm-up exchange asks one)."""
        return int(getattr(self._server, "completions", 0))

    def provider(self) -> dict[str, Any]:
        """The ``provider`` block naming it, free of charge."""
        return scripted_provider(
            self.base_url,
            provider_id=WARMUP_PROVIDER,
            model_id=WARMUP_MODEL,
            cost=ModelCost(input=0.0, output=0.0, cache_read=0.0, cache_write=0.0),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


async def warm_up(client: OpenCodeClient, *, timeout: float = 60.0) -> None:
    """One throwaway exchange in the client's directory with the warm-up model; its session is deleted."""
    session = await client.create_session(WARMUP_TITLE, metadata={"warmup": True})
    try:
        await client.prompt(
            session["id"], WARMUP_PROMPT, model=f"{WARMUP_PROVIDER}/{WARMUP_MODEL}", timeout=timeout
        )
    finally:
        await client.delete_session(session["id"])
