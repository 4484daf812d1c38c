"""The running engine: ledger + constitution + OpenCode backend + service + MCP server.

The main agent talks to the MCP server over stdio (or streamable HTTP with a bearer token);
sub-agents always reach it over a loopback HTTP endpoint, each with its own session-bound token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import logfire
import platformdirs
import uvicorn
from fastmcp import FastMCP

from engine.mcp_server import build_server
from engine.opencode_backend import OpenCodeBackend
from engine.other_engines import Orphans, follow_revocations
from engine.owner import engine_stopped, new_engine_id
from engine.recovery import recover, supervise_again
from engine.service import DelegationService, readopt
from engine.settings import EngineSettings, load_constitution_file
from engine.tokens import OPERATOR, SessionTokens
from ledger import Ledger
from ledger.paths import APP


def configure_telemetry() -> None:
    """logfire spans at the edges; nothing leaves the machine without a token."""
    logfire.configure(
        send_to_logfire="if-token-present",
        service_name="delegation-ledger",
        console=False,
        inspect_arguments=False,
    )


class Engine:
    def __init__(self, settings: EngineSettings, *, model_base_url: str | None = None) -> None:
        self.settings = settings
        self.model_base_url = model_base_url
        self.tokens = SessionTokens()
        self.ledger: Ledger | None = None
        self.service: DelegationService | None = None
        self.mcp: FastMCP | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.agent_mcp_url: str | None = None
        self.operator_token: str | None = None
        self.recovery: dict[str, Any] = {}
        self.engine_id: str | None = None
        self._revocations: asyncio.Task[None] | None = None
        self._orphans: asyncio.Task[None] | None = None
        #: told, in one line, of each session of a stopped engine settled while this one runs
        self.notify: Callable[[str], None] | None = None

    async def start(self, *, http_port: int | None = None) -> Engine:
        s = self.settings
        constitution = load_constitution_file(s)  # refused loudly when broken, before anything starts
        self.ledger = Ledger.init(s.db_path) if not s.db_path.exists() else Ledger.open(s.db_path)
        state_root = s.work_dir or Path(platformdirs.user_state_dir(APP)) / "agents"
        backend = OpenCodeBackend(
            state_root,
            model_base_url=self.model_base_url,
            provider=s.provider_config,
            model=s.model,
            isolated=s.isolated,
            stop_grace=s.stop_grace_s,
            pool_size=s.pool_size,
            pool_warmup=s.pool_warmup,
            keep_state=s.keep_agent_state,
            tokens=self.tokens,
        )
        self.engine_id = new_engine_id()
        self.service = DelegationService(
            self.ledger, s, backend, constitution, tokens=self.tokens, engine_id=self.engine_id
        )
        self.mcp = build_server(self.service)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.agent_mcp_host, http_port if http_port is not None else s.agent_mcp_port))
        port = sock.getsockname()[1]
        app = self.mcp.http_app(path="/mcp")
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        for _ in range(200):
            if self._http.started:
                break
            await asyncio.sleep(0.01)
        self.agent_mcp_url = f"http://{s.agent_mcp_host}:{port}/mcp"
        self.service.agent_mcp_url = self.agent_mcp_url
        self.operator_token = secrets.token_urlsafe(32)
        self.tokens.issue(OPERATOR, token=self.operator_token)
        source = str(s.constitution_path) if s.constitution_path else None
        await self.service.record_constitution(source)
        self.recovery = await recover(
            self.ledger, backend, mcp_url=self.agent_mcp_url, engine_id=self.engine_id
        )
        service = self.service
        await supervise_again(self.ledger, self.recovery, lambda sid, agent: readopt(service, sid, agent))
        # revocations recorded by any engine on this ledger stop this one's agents too
        self._revocations = asyncio.create_task(follow_revocations(self.ledger, service.manager))
        # the sessions of an engine that stops meanwhile are settled here, not left until a restart
        service.orphans = Orphans(
            self.ledger,
            backend,
            service.manager,
            engine_id=self.engine_id,
            mcp_url=self.agent_mcp_url,
            adopt=lambda sid, agent: readopt(service, sid, agent),
            notify=self.notify,
        )
        self._orphans = asyncio.create_task(service.orphans.follow())
        # off the critical path: the pool fills in the background, warming up in the one allowed
        # root when there is exactly one (later: in the project directory of the latest spawn)
        roots = tuple(constitution.allowed_roots or ())
        backend.start_pool(roots[0] if len(roots) == 1 else None, mcp_url=self.agent_mcp_url)
        return self

    async def stop(self) -> None:
        for task in (self._revocations, self._orphans):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.service is not None:
            backend: OpenCodeBackend = self.service.backend  # type: ignore[assignment]
            # the idle pooled servers stop while the running agents are stopped and recorded
            await asyncio.gather(self.service.shutdown(), backend.pool.close())
            await backend.close()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, 10)
        if self.ledger is not None:
            self.ledger.close()
        if self.engine_id is not None:
            engine_stopped(self.engine_id)

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
