"""AgentBackend over real `opencode serve` processes: one server per agent, single use.

A spawn takes a pre-started, warmed server from the pool (``engine/opencode_pool.py``), or
cold-starts one when the pool is empty or off. A pooled server's config holds nothing
agent-specific; it is applied once the server is the agent's (the same on a cold start, except
that the MCP entry then goes into the start config, which saves a round trip):

* the project directory: every request of the agent's client carries ``?directory=`` (OpenCode
  runs one instance per directory: sessions, events, tools and files all live there);
* the permission rules derived from the delegation: on the session (``POST /session``
  ``permission``), where OpenCode enforces them (``deny`` hides the tool; ``ask`` is answered by
  the engine's policy);
* our MCP server with the agent's own bearer token: ``POST /mcp`` in that directory.

A pooled server's warm-up readies the rest in the directory it warms up in (the one the pool
expects next), off the spawn's path: it connects our MCP server (OpenCode's MCP handshake and tool
listing cost it about 0.2 CPU-s) with a token minted for it that belongs to nobody yet and is bound
to the agent's session when the server is taken (``engine/tokens.py``), and it opens the event
stream (about 0.05 CPU-s in OpenCode) that the agent then reads. A server taken for another
directory gets both there at take time, with a new token; its minted one is dropped.

The event stream is open before the first prompt so nothing is missed (``opencode_events.py``
maps it to the engine's events). Server credentials are kept in a 0600 file under the engine's
state folder (never on the ledger) so that a restarted engine can re-attach.

Re-attaching (``attach``) happens only to a server that outlived both its engine and its watchdog.
The new engine guards it (``opencode_adopted.py``), connects it to its own MCP server with a new
token for the agent's session, and catches up with what the session did while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backend import AgentSpec
from engine.errors import OpenCodeError
from engine.opencode_adopted import AdoptedServer
from engine.opencode_agent import OpenCodeAgent
from engine.opencode_client import OpenCodeClient
from engine.opencode_config import build_agent_config, remote_mcp, session_permission_rules
from engine.opencode_pool import OpenCodePool
from engine.opencode_runner import OpenCodeService
from engine.opencode_warmup import WARMUP_PROVIDER, WarmupResponder, warm_up
from engine.tokens import SessionTokens

MCP_NAME = "ledger"


#: how many agents' origins (pool or cold) `OpenCodeBackend.origins` keeps
ORIGINS_KEPT = 1000


@dataclass
class Prepared:
    """What a pooled server's warm-up readied in ``directory`` for the agent that takes it: an agent
    without a session yet (a client there, its event stream open; no server of its own, so closing
    it leaves the server running), and our MCP server at ``mcp_url`` connected with ``token``, which
    belongs to nobody until then (both None: no MCP)."""

    directory: str
    agent: OpenCodeAgent
    mcp_url: str | None = None
    token: str | None = None


class OpenCodeBackend:
    """One OpenCode server per agent: taken from the warm pool, else cold-started."""

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
        pool_size: int = 0,
        pool_warmup: bool = True,
        tokens: SessionTokens | None = None,
        keep_state: bool = False,
    ) -> None:
        """``tokens``: the registry our MCP server checks; agents get their tokens from it."""
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
        self._warmup = WarmupResponder() if pool_size > 0 and pool_warmup else None
        self._pool_ids = itertools.count()
        self._pool_run = secrets.token_hex(4)
        self.pool = OpenCodePool(pool_size, self._pooled_service, self._warm if self._warmup else None)
        self.tokens = tokens
        self.keep_state = keep_state
        #: our MCP server's URL for pooled servers to connect to while they warm up (``start_pool``)
        self.mcp_url: str | None = None
        self._prepared: dict[OpenCodeService, Prepared] = {}
        #: how each recent agent's server came: "pool" or "cold" (by session id, the newest
        #: ORIGINS_KEPT), for tests and statistics
        self.origins: dict[str, str] = {}

    def _config(self, *, warmup: bool = False, mcp: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The config a server starts with: the model; a cold-started agent's server also its MCP
        entry (a pooled one gets it at run time, ``POST /mcp``)."""
        config = build_agent_config(
            model_base_url=self.model_base_url,
            provider=None if self.model_base_url else self.provider,
            model=self.model,
            mcp=mcp,
        )
        if warmup and self._warmup is not None:
            config.setdefault("provider", {}).update(self._warmup.provider())
            if "enabled_providers" in config:
                config["enabled_providers"] = [*config["enabled_providers"], WARMUP_PROVIDER]
        return config

    def _service(self, workdir: str | Path, state_dir: Path, config: dict[str, Any]) -> OpenCodeService:
        return OpenCodeService(
            workdir,
            state_dir,
            config=config,
            mode="isolated" if self.isolated else "production",
            npm_cache=self.npm_cache,
            stop_grace=self.stop_grace,
        )

    # -- the pool ---------------------------------------------------------------------------------
    def start_pool(self, hint: str | None = None, mcp_url: str | None = None) -> None:
        """Begin filling the warm pool in the background (``hint``: the project expected next;
        ``mcp_url``: our MCP server, connected during each warm-up when there is a token registry)."""
        self.mcp_url = mcp_url
        if self.pool.size == 0:
            return
        if self._warmup is not None and not self._warmup.running:
            self._warmup.start()
        self.pool.start(hint)

    def _pooled_service(self) -> OpenCodeService:
        state_dir = self.state_root / "_pool" / f"{self._pool_run}-{next(self._pool_ids)}"
        workdir = state_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        return self._service(workdir, state_dir, self._config(warmup=True))

    async def _warm(self, service: OpenCodeService, directory: str | None) -> None:
        """In the directory the pool expects next: our MCP server connected (before the exchange,
        which then warms up the agent's tool set too), the throwaway exchange, then the agent's
        event stream opened (after it: none of its events are queued)."""
        info = service.info
        if not (directory and os.path.isdir(directory)):
            async with OpenCodeClient(info.url, info.password) as client:  # in its own folder: no agent's
                await warm_up(client)
            return
        agent = OpenCodeAgent(
            None, OpenCodeClient(info.url, info.password, directory=directory), "", None, info.pid, info.url
        )
        prepared = Prepared(directory, agent)
        try:
            if self.mcp_url is not None and self.tokens is not None:
                prepared.mcp_url, prepared.token = self.mcp_url, self.tokens.mint()
                await _connect_mcp(agent.client, self.mcp_url, prepared.token)
            await warm_up(agent.client)
            await agent.open_events()
        except BaseException:
            await self._release(prepared)
            raise
        self._prepared[service] = prepared

    async def _release(self, prepared: Prepared) -> None:
        """Drop what a warm-up readied (the server itself is the pool's or an agent's to stop)."""
        if prepared.token is not None and self.tokens is not None:
            self.tokens.discard(prepared.token)
        await prepared.agent.close()

    # -- agents ------------------------------------------------------------------------------------
    async def start(self, spec: AgentSpec) -> OpenCodeAgent:
        if spec.mcp_url and self.tokens is None:
            raise OpenCodeError("an agent with an MCP url needs the backend's token registry")
        state_dir = self.state_root / spec.session_id
        service = await self.pool.take(spec.project_directory) if self.pool.size > 0 else None
        self.origins[spec.session_id] = "pool" if service is not None else "cold"
        if len(self.origins) > ORIGINS_KEPT:  # bounded: a long-running server spawns without end
            del self.origins[next(iter(self.origins))]
        prepared = self._prepared.pop(service, None) if service is not None else None
        agent: OpenCodeAgent | None = None
        try:
            for stale in [s for s in self._prepared if s not in self.pool.services()]:
                await self._release(self._prepared.pop(stale))  # pooled servers that died or were stopped
            if prepared is not None and prepared.directory != spec.project_directory:
                await self._release(prepared)
                prepared = None
            # bound to the agent's session before anything runs; None: nothing (left) to connect
            token = self._token(spec, prepared)
            pooled = service is not None
            if service is None:  # cold: the MCP entry goes into the start config (no round trip later)
                mcp = {MCP_NAME: remote_mcp(spec.mcp_url, token)} if spec.mcp_url else None
                service = self._service(spec.project_directory, state_dir, self._config(mcp=mcp))
                await service.start()
            info = service.info
            opened = prepared is not None  # the warm-up's agent: its event stream is open already
            if prepared is not None:
                agent, prepared = prepared.agent, None
                agent.service, agent.spec = service, spec
            else:
                client = OpenCodeClient(info.url, info.password, directory=spec.project_directory)
                agent = OpenCodeAgent(service, client, "", spec, info.pid, info.url)
            # session, event stream and MCP at once: all must be ready before the prompt
            session, _, _ = await asyncio.gather(
                agent.client.create_session(
                    spec.title, metadata=spec.metadata, permission=session_permission_rules(spec.permission)
                ),
                asyncio.sleep(0) if opened else agent.open_events(),
                _connect_mcp(agent.client, spec.mcp_url, token)
                if pooled and spec.mcp_url and token
                else asyncio.sleep(0),
            )
            agent.opencode_session_id = session["id"]
            _write_private(
                state_dir / "server.json",
                {
                    "url": info.url,
                    "pid": info.pid,
                    "password": info.password,
                    "opencode_session_id": session["id"],
                    "directory": spec.project_directory,
                    "opencode_state_dir": str(service.state_dir),
                },
            )
            agent.tidy = functools.partial(self._tidy, state_dir, service.state_dir)
        except BaseException:
            if agent is not None:
                await agent.close()  # closes the event stream and stops the server
            else:
                if prepared is not None:
                    await self._release(prepared)
                if service is not None:
                    await service.stop(abort_sessions=False)
            raise
        return agent

    def _token(self, spec: AgentSpec, prepared: Prepared | None) -> str | None:
        """The token to connect the agent's MCP server with, issued for its session. None when there
        is nothing to connect: the agent gets no MCP server, or ``prepared`` connected it already
        with a minted token, which is bound to the agent's session now (or dropped if unused)."""
        if prepared is not None and prepared.token is not None:
            assert self.tokens is not None  # it minted the token
            minted, prepared.token = prepared.token, None
            if spec.mcp_url == prepared.mcp_url:
                self.tokens.bind(minted, spec.session_id)
                return None
            self.tokens.discard(minted)
        if not spec.mcp_url or self.tokens is None:
            return None
        return self.tokens.issue(spec.session_id)

    async def attach(
        self,
        server_url: str,
        opencode_session_id: str,
        pid: int | None,
        session_id: str,
        *,
        mcp_url: str | None = None,
        recorded_calls: Iterable[str] = (),
        recorded_messages: Iterable[str] = (),
    ) -> OpenCodeAgent | None:
        """Re-attach to a server that outlived a restart of the engine (None when it is gone, is not the
        server its credentials name, or has lost the session: such a server of ours is stopped). The
        server is then this engine's: guarded, connected to ``mcp_url`` with a new token, and stopped
        when the agent ends. Its event stream starts with what the session did meanwhile, minus
        ``recorded_calls`` and ``recorded_messages``."""
        creds = self._credentials(session_id)
        if creds is None or pid is None or creds.get("pid") != pid:
            return None
        # ours (its environment holds the recorded password) and alive, or nothing to do
        adopted = AdoptedServer.adopt(pid, creds["password"], self.stop_grace)
        if adopted is None:
            return None
        client = OpenCodeClient(creds["url"], creds["password"], directory=creds.get("directory"))
        agent = OpenCodeAgent(None, client, opencode_session_id, None, pid, creds["url"], adopted=adopted)
        agent.tidy = self._tidy_of(session_id, creds)
        try:
            await client.health(timeout=3)
            await client.get_session(opencode_session_id)
        except Exception:
            await agent.close()  # a server of ours that cannot carry on: stopped, not left behind
            return None
        try:
            if mcp_url is not None and self.tokens is not None:
                await _connect_mcp(client, mcp_url, self.tokens.issue(session_id))
            await agent.open_events()
            await agent.catch_up(calls=recorded_calls, messages=recorded_messages)
        except BaseException:
            await agent.close()
            if self.tokens is not None:
                self.tokens.revoke(session_id)
            raise
        return agent

    def leftovers(self) -> list[str]:
        """Sessions whose credentials are still on disk: their agent never ended here (an ended
        agent's are removed), so their server may still run."""
        if not self.state_root.is_dir():
            return []
        return sorted(p.parent.name for p in self.state_root.glob("*/server.json"))

    async def stop_leftover(self, session_id: str) -> bool:
        """Stop the server of ``session_id`` if it still runs and is the one its credentials name (True
        then), and tidy its folders; for a session that ended while no engine could stop its server."""
        creds = self._credentials(session_id)
        if creds is None:
            return False
        adopted = None
        if isinstance(creds.get("pid"), int) and isinstance(creds.get("password"), str):
            adopted = AdoptedServer.adopt(creds["pid"], creds["password"], self.stop_grace)
        if adopted is not None:
            await adopted.stop()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._tidy_of(session_id, creds))
        return adopted is not None

    def _credentials(self, session_id: str) -> dict[str, Any] | None:
        """The agent's server.json (written by ``start``); None when it is missing or unreadable."""
        try:
            creds = json.loads((self.state_root / session_id / "server.json").read_text())
        except (OSError, ValueError):
            return None
        return creds if isinstance(creds, dict) else None

    def _tidy_of(self, session_id: str, creds: Mapping[str, Any]) -> Callable[[], None]:
        """The tidy-up of a session's folders, its server's folder taken from its credentials."""
        server_dir = creds.get("opencode_state_dir")
        return functools.partial(
            self._tidy, self.state_root / session_id, Path(server_dir) if server_dir else None
        )

    def _tidy(self, session_dir: Path, server_dir: Path | None) -> None:
        """After an agent's server is gone: its credentials go; unless ``keep_state``, so does the rest
        of its OpenCode state (database, temporary files; a pooled server's whole folder), except its
        opencode.log, which stays in the session's folder."""
        (session_dir / "server.json").unlink(missing_ok=True)
        if self.keep_state or server_dir is None:
            return
        log_file = server_dir / "opencode.log"
        if server_dir != session_dir:  # a pooled server's folder: the log moves to the session's
            if log_file.exists():
                session_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(log_file, session_dir / "opencode.log")
            shutil.rmtree(server_dir, ignore_errors=True)
            return
        for item in server_dir.iterdir():
            if item.name != "opencode.log":
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)

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
                svc = self._service(workdir, self.state_root / "_discovery", self._config())
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
        await self.pool.close()
        prepared, self._prepared = list(self._prepared.values()), {}
        await asyncio.gather(*(self._release(p) for p in prepared), return_exceptions=True)
        if self._warmup is not None:
            self._warmup.stop()
        if self._discovery is not None:
            await self._discovery.stop(abort_sessions=False)
            self._discovery = None


async def _connect_mcp(client: OpenCodeClient, url: str, token: str) -> None:
    """Our MCP server, with a bearer token, in the client's directory only."""
    status = await client.add_mcp(MCP_NAME, remote_mcp(url, token))
    state = status.get(MCP_NAME) or {}
    if state.get("status") != "connected":
        raise OpenCodeError(f"the agent's OpenCode could not connect to our MCP server: {state}")


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
