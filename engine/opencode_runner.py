"""One `opencode serve` process per agent: find it, start it, watch it, stop it without orphans.

Process tree::

    engine (this Python) ── watchdog (own session; leads the process group) ── opencode serve ── tools...

The watchdog (``engine/_watchdog.py``) ends the whole group if the engine dies, even by
``kill -9``. A graceful stop aborts running sessions first (so their replies are settled with
``MessageAbortedError``; OpenCode dies at once on SIGTERM), then SIGTERM, then SIGKILL after a
grace period, and checks ``/proc`` that nothing of the group is left.

Two modes. ``isolated`` (tests, demo): HOME, XDG dirs, config dir, database and TMPDIR all live
in ``state_dir``; the project's own ``opencode.json`` is ignored; OpenCode's background npm
install of ``@opencode-ai/plugin`` into its config dir runs offline against ``npm_cache`` (by
default an empty private cache, so nothing is downloaded). ``production``: the user's
environment, credentials and the project's ``opencode.json`` apply; our config is layered on top
through ``OPENCODE_CONFIG_CONTENT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from engine._watchdog import children, descendants, group_alive, process_alive, process_tree
from engine.errors import OpenCodeError, OpenCodeStartError, OpenCodeTimeout
from engine.opencode_client import OpenCodeClient
from engine.opencode_config import OFFLINE_ENV

log = logging.getLogger(__name__)

Mode = Literal["isolated", "production"]
BUNDLED_BINARY = Path(__file__).resolve().parent / "npm" / "node_modules" / ".bin" / "opencode"
WATCHDOG = Path(__file__).resolve().parent / "_watchdog.py"
USERNAME = "opencode"
_LISTENING = re.compile(rb"opencode server listening on (http://[\w.\-]+:(\d+))")
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SHELL", "TERM")


def find_opencode_binary(env: Mapping[str, str] | None = None) -> Path:
    """``$OPENCODE_BIN``, else the pinned npm install in ``engine/npm``; OpenCodeStartError if neither."""
    environ = os.environ if env is None else env
    if explicit := environ.get("OPENCODE_BIN"):
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise OpenCodeStartError(f"OPENCODE_BIN does not name an executable file (got {explicit!r})")
        return path
    if BUNDLED_BINARY.is_file() and os.access(BUNDLED_BINARY, os.X_OK):
        return BUNDLED_BINARY
    raise OpenCodeStartError(
        f"opencode binary not found (looked for $OPENCODE_BIN and {BUNDLED_BINARY}); "
        "run `.ci/dev setup` (it runs `npm ci --prefix engine/npm`) or set OPENCODE_BIN"
    )


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class ServerInfo:
    """Facts about one running server."""

    pid: int
    pgid: int
    port: int
    url: str
    password: str = field(repr=False)
    started_at: float
    ready_seconds: float
    version: str
    username: str = USERNAME


class OpenCodeService:
    """One `opencode serve` for one agent, working in ``workdir``, keeping its files in ``state_dir``."""

    def __init__(
        self,
        workdir: str | Path,
        state_dir: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        mode: Mode = "isolated",
        binary: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        npm_cache: str | Path | None = None,
        offline: bool = True,
        project_config: bool | None = None,
        start_timeout: float = 30.0,
        stop_grace: float = 3.0,
        request_timeout: float = 30.0,
    ) -> None:
        if mode not in ("isolated", "production"):
            raise ValueError(f"mode is not 'isolated' or 'production' (got {mode!r})")
        self.workdir = Path(workdir).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.config = dict(config) if config is not None else None
        self.mode: Mode = mode
        self.binary = Path(binary) if binary is not None else None
        self.extra_env = dict(env or {})
        self.npm_cache = Path(npm_cache).resolve() if npm_cache is not None else None
        self.offline = offline
        self.project_config = (mode == "production") if project_config is None else project_config
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.request_timeout = request_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: OpenCodeClient | None = None
        self._info: ServerInfo | None = None

    # -- facts ------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """stdout and stderr of every start, appended."""
        return self.state_dir / "opencode.log"

    @property
    def info(self) -> ServerInfo:
        if self._info is None:
            raise OpenCodeError("opencode server is not started")
        return self._info

    @property
    def client(self) -> OpenCodeClient:
        if self._client is None:
            raise OpenCodeError("opencode server is not started")
        return self._client

    @property
    def url(self) -> str:
        return self.info.url

    def is_alive(self) -> bool:
        """The watchdog and the opencode process both run."""
        if self._proc is None or self._info is None or self._proc.poll() is not None:
            return False
        return process_alive(self._info.pid)

    async def health(self) -> dict[str, Any]:
        return await self.client.health(timeout=5.0)

    def rss_bytes(self) -> int | None:
        """Resident memory of the opencode process (for recycling decisions), if known."""
        if self._info is None:
            return None
        try:
            status = Path(f"/proc/{self._info.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

    # -- environment ------------------------------------------------------------------------
    def build_env(self, password: str) -> dict[str, str]:
        """The environment `opencode serve` runs with (see the module docstring for the modes)."""
        if self.mode == "production":
            env = dict(os.environ)
        else:
            env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
            s = self.state_dir
            xdg = s / "xdg"
            npm_cache = self.npm_cache or s / "npm-cache"
            env |= {
                "HOME": str(s / "home"),
                "XDG_CONFIG_HOME": str(xdg / "config"),
                "XDG_DATA_HOME": str(xdg / "data"),
                "XDG_CACHE_HOME": str(xdg / "cache"),
                "XDG_STATE_HOME": str(xdg / "state"),
                "OPENCODE_CONFIG_DIR": str(xdg / "config" / "opencode"),
                "OPENCODE_DB": str(s / "opencode.db"),
                "TMPDIR": str(s / "tmp"),
                "npm_config_cache": str(npm_cache),
                "npm_config_update_notifier": "false",
            }
            if self.npm_cache is None:
                env["npm_config_offline"] = "true"
        if self.offline:
            env |= OFFLINE_ENV
        if not self.project_config:
            env["OPENCODE_DISABLE_PROJECT_CONFIG"] = "1"
        if self.config is not None:
            env["OPENCODE_CONFIG_CONTENT"] = json.dumps(self.config)
        env["OPENCODE_SERVER_USERNAME"] = USERNAME
        env["OPENCODE_SERVER_PASSWORD"] = password
        env |= self.extra_env
        return env

    def _make_dirs(self, env: Mapping[str, str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.mode == "isolated":
            for key in (
                "HOME",
                "XDG_CONFIG_HOME",
                "XDG_DATA_HOME",
                "XDG_CACHE_HOME",
                "XDG_STATE_HOME",
                "OPENCODE_CONFIG_DIR",
                "TMPDIR",
                "npm_config_cache",
            ):
                Path(env[key]).mkdir(parents=True, exist_ok=True)

    # -- start ------------------------------------------------------------------------------
    async def start(self) -> Self:
        """Start the server and wait until ``GET /global/health`` says healthy."""
        if self.is_alive():
            raise OpenCodeStartError("opencode server is already started")
        await self.stop(abort_sessions=False)  # leftovers of a server that died by itself
        binary = self.binary or find_opencode_binary()
        password = secrets.token_urlsafe(24)
        env = self.build_env(password)
        self._make_dirs(env)
        if not self.workdir.is_dir():
            raise OpenCodeStartError(f"workdir is not a directory (got {str(self.workdir)!r})")
        command = [
            sys.executable,
            "-I",
            str(WATCHDOG),
            str(os.getpid()),
            str(self.stop_grace),
            "--",
            str(binary),
            "serve",
            "--port",
            "0",
            "--hostname",
            "127.0.0.1",
        ]
        started_wall, started = time.time(), time.monotonic()
        with open(self.log_path, "ab") as out:
            offset = out.tell()
            try:
                self._proc = subprocess.Popen(
                    command,
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise OpenCodeStartError(f"could not run {binary}: {exc}") from exc
        deadline = started + self.start_timeout
        try:
            url, port = await self._wait_for_url(offset, deadline)
            self._client = OpenCodeClient(url, password, username=USERNAME, timeout=self.request_timeout)
            health = await self._wait_healthy(self._client, offset, deadline)
            kids = children(self._proc.pid)
            self._info = ServerInfo(
                pid=kids[0] if kids else self._proc.pid,
                pgid=self._proc.pid,
                port=port,
                url=url,
                password=password,
                started_at=started_wall,
                ready_seconds=time.monotonic() - started,
                version=str(health.get("version", "")),
            )
        except BaseException:
            await self._close_client()
            await self._terminate(grace=0.5)
            raise
        log.info("opencode serve ready at %s (pid %s, %.2fs)", url, self._info.pid, self._info.ready_seconds)
        return self

    def _log_tail(self, offset: int = 0, size: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, f.seek(0, os.SEEK_END) - size))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def _check_running(self, offset: int) -> None:
        assert self._proc is not None
        if (code := self._proc.poll()) is not None:
            raise OpenCodeStartError(
                "opencode serve exited while starting", returncode=code, log_tail=self._log_tail(offset)
            )

    async def _wait_for_url(self, offset: int, deadline: float) -> tuple[str, int]:
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if match := _LISTENING.search(f.read()):
                    return match.group(1).decode(), int(match.group(2))
            self._check_running(offset)
            if time.monotonic() > deadline:
                raise OpenCodeTimeout(
                    "the 'opencode server listening on' line",
                    self.start_timeout,
                    log_tail=self._log_tail(offset),
                )
            await asyncio.sleep(0.05)

    async def _wait_healthy(self, client: OpenCodeClient, offset: int, deadline: float) -> dict[str, Any]:
        while True:
            with contextlib.suppress(OpenCodeError):
                health = await client.health(timeout=2.0)
                if health.get("healthy") is True:
                    return health
            self._check_running(offset)
            if time.monotonic() > deadline:
                raise OpenCodeTimeout(
                    "opencode to report healthy", self.start_timeout, log_tail=self._log_tail(offset)
                )
            await asyncio.sleep(0.05)

    # -- stop -------------------------------------------------------------------------------
    async def stop(self, *, abort_sessions: bool = True, grace: float | None = None) -> None:
        """Abort busy sessions, then SIGTERM the group, SIGKILL after ``grace`` s; verify none is left."""
        if self._proc is None:
            return
        try:
            if abort_sessions and self._client is not None and self.is_alive():
                await self._abort_busy_sessions(self._client)
        finally:
            await self._close_client()
            await self._terminate(self.stop_grace if grace is None else grace)

    async def restart(self) -> Self:
        """Recycle: stop, then start again (new port and password; sessions persist in the database)."""
        await self.stop()
        return await self.start()

    def kill(self) -> None:
        """SIGKILL the group and its descendants now, without asking anything (for emergencies)."""
        if self._proc is not None:
            for pid in descendants(self._proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            _signal_group(self._proc.pid, signal.SIGKILL)

    async def _abort_busy_sessions(self, client: OpenCodeClient, settle: float = 3.0) -> None:
        try:
            busy = [sid for sid, st in (await client.session_status()).items() if st.get("type") != "idle"]
            results = await asyncio.gather(*(client.abort(sid) for sid in busy), return_exceptions=True)
            for sid, result in zip(busy, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("could not abort session %s before stopping: %s", sid, result)
            deadline = time.monotonic() + settle
            while busy and time.monotonic() < deadline and await client.session_status():
                await asyncio.sleep(0.05)
        except OpenCodeError as exc:
            log.warning("could not abort running sessions before stopping: %s", exc)

    async def _close_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        tree = process_tree(pgid, pgid)
        _signal_group(pgid, signal.SIGTERM)  # the watchdog then ends the tree, detached tool processes too
        if not await self._wait_gone(proc, tree, grace + 1.0):
            log.warning("opencode group %s still alive %.1fs after SIGTERM; sending SIGKILL", pgid, grace)
            _signal_group(pgid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not await self._wait_gone(proc, tree, 5.0):
                left = sorted(pid for pid in tree if process_alive(pid))
                raise OpenCodeStartError(f"processes of opencode group {pgid} survive SIGKILL: {left}")
        self._proc = None
        self._info = None

    @staticmethod
    async def _wait_gone(proc: subprocess.Popen[bytes], tree: set[int], timeout: float) -> bool:
        """Wait until the watchdog is reaped and neither its group nor any process of ``tree`` lives
        (/proc is read once the watchdog is gone: it ends the others first)."""
        deadline = time.monotonic() + timeout
        while True:
            gone = proc.poll() is not None and not group_alive(proc.pid)
            if gone and not any(process_alive(pid) for pid in tree):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
