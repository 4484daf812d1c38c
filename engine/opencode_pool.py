"""A warm pool of single-use `opencode serve` processes, started off the critical path.

A cold start costs about 2 CPU-seconds and the first turn of a fresh server 2-3 more (measured on
2 cores, OpenCode 1.18.33), so several spawns at once were CPU-bound. The pool keeps ``size``
servers started *and warmed* (``engine/opencode_warmup.py``) in the background, and a spawn takes
one instead of starting one.

Rules:

* single use: a taken server belongs to one agent and is stopped when that agent ends; it is
  never handed out twice. Nothing agent-specific is in a pooled server's config: the agent's
  project directory and permission rules are applied after it is taken, and the MCP connection
  its warm-up made gets its owner then (``engine/opencode_backend.py``);
* the pool refills in the background after each take, one server at a time, once no spawn
  happened for ``refill_delay`` seconds and the CPU is not saturated (at most ``max_defer`` later):
  a burst of spawns gets the CPU for its agents' first turns instead of sharing it with refills.
  Pooled servers that die are replaced;
* an empty pool is not waited for: ``take`` returns None and the caller cold-starts a server;
* every pooled server runs under the watchdog like any other (``engine/_watchdog.py``), so a
  ``kill -9`` of the engine leaves none behind; ``close`` stops them all and removes their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.opencode_runner import OpenCodeService

log = logging.getLogger(__name__)

MakeService = Callable[[], OpenCodeService]
WarmUp = Callable[[OpenCodeService, str | None], Awaitable[None]]


@dataclass
class Pooled:
    service: OpenCodeService
    #: the project directory its warm-up ran in (None: its own work folder)
    warmed_for: str | None
    ready_at: float = field(default_factory=time.monotonic)


@dataclass
class PoolStats:
    started: int = 0
    taken: int = 0
    taken_warm_for_directory: int = 0
    misses: int = 0
    replaced: int = 0
    start_failures: int = 0
    warmup_failures: int = 0


class OpenCodePool:
    """Keeps ``size`` warmed servers ready; ``take`` one (or None when none is ready)."""

    def __init__(
        self,
        size: int,
        make_service: MakeService,
        warm_up: WarmUp | None = None,
        *,
        check_interval: float = 2.0,
        retry_delay: float = 1.0,
        refill_delay: float = 2.0,
        max_defer: float = 15.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"pool size must be 0 or more (got {size})")
        self.size = size
        self._make = make_service
        self._warm_up = warm_up
        self.check_interval = check_interval
        self.retry_delay = retry_delay
        self.refill_delay = refill_delay
        self.max_defer = max_defer
        self._last_take = float("-inf")
        self._ready: list[Pooled] = []
        self._starting: OpenCodeService | None = None
        self._hint: str | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = PoolStats()

    # -- facts -------------------------------------------------------------------------------------
    @property
    def ready(self) -> int:
        return len(self._ready)

    def services(self) -> list[OpenCodeService]:
        """Servers the pool holds now (ready, and the one starting), for inspection."""
        found = [p.service for p in self._ready]
        return found + ([self._starting] if self._starting is not None else [])

    def statistics(self) -> dict[str, Any]:
        st = self.stats
        return {
            "size": self.size,
            "ready": self.ready,
            "started": st.started,
            "taken": st.taken,
            "taken_warm_for_directory": st.taken_warm_for_directory,
            "misses": st.misses,
            "replaced": st.replaced,
            "start_failures": st.start_failures,
            "warmup_failures": st.warmup_failures,
        }

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, hint: str | None = None) -> None:
        """Begin filling in the background (``hint``: the project directory to warm up in)."""
        self._hint = hint
        if self.size > 0 and self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="opencode-pool")

    async def wait_ready(self, count: int | None = None, timeout: float = 120.0) -> bool:
        """Wait until ``count`` (default: all) servers are ready; False on timeout."""
        want = self.size if count is None else min(count, self.size)
        deadline = time.monotonic() + timeout
        while len(self._ready) < want:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
        return True

    async def take(self, directory: str | None = None) -> OpenCodeService | None:
        """A ready server for one agent (preferring one warmed in ``directory``), or None."""
        if directory is not None:
            self._hint = directory
        self._last_take = time.monotonic()
        self._wake.set()  # refill (and warm up for this directory from now on)
        while self._ready:
            index = next((i for i, p in enumerate(self._ready) if p.warmed_for == directory), 0)
            pooled = self._ready.pop(index)
            if pooled.service.is_alive():
                self.stats.taken += 1
                self.stats.taken_warm_for_directory += pooled.warmed_for == directory
                return pooled.service
            await self._discard(pooled.service, "died while pooled")
        self.stats.misses += 1
        return None

    async def close(self) -> None:
        """Stop filling, stop every pooled server (and the one starting), remove their state."""
        self._closed = True
        if self._starting is not None:  # holds no agent's work: no grace period
            self._starting.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        pooled, self._ready = self._ready, []
        await asyncio.gather(*(self._stop(p.service) for p in pooled), return_exceptions=True)

    # -- filling -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            await self._prune()
            if len(self._ready) < self.size:
                await self._quiet()
                if await self._add_one():
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(30.0, self.retry_delay * 2 ** min(failures, 5)))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.check_interval)

    async def _quiet(self) -> None:
        """Refills yield to running agents: wait until no server was taken for ``refill_delay`` s
        and the machine has a quarter of its CPU idle, or until ``max_defer`` s passed."""
        began = time.monotonic()
        while time.monotonic() - began < self.max_defer:
            idle = time.monotonic() - self._last_take
            if idle < self.refill_delay:
                await asyncio.sleep(min(self.refill_delay - idle, 0.5))
                continue
            before = _cpu_times()
            await asyncio.sleep(0.25)
            after = _cpu_times()
            if before is None or after is None or after[1] - before[1] >= 0.25 * (after[0] - before[0]):
                return

    async def _add_one(self) -> bool:
        service = self._make()
        self._starting = service
        hint = self._hint
        try:
            await service.start()
            self.stats.started += 1
            warmed_for: str | None = None
            if self._warm_up is not None:
                try:
                    await self._warm_up(service, hint)
                    warmed_for = hint
                except Exception as exc:  # a cold-but-working server is still worth keeping
                    if not self._closed:
                        self.stats.warmup_failures += 1
                        log.warning("warm-up of pooled opencode server failed: %s", exc)
            if not service.is_alive():
                raise RuntimeError("the server died during its warm-up")
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(service))
            raise
        except Exception as exc:
            await self._stop(service)
            if self._closed:  # close() killed it while it started: not a failure
                log.debug("pooled opencode server stopped while starting (pool closed): %s", exc)
                return False
            self.stats.start_failures += 1
            log.warning("could not start a pooled opencode server: %s", exc)
            return False
        finally:
            self._starting = None
        self._ready.append(Pooled(service, warmed_for))
        self._changed.set()
        return True

    async def _prune(self) -> None:
        """Drop pooled servers that died (they are replaced by the next fill)."""
        for pooled in [p for p in self._ready if not p.service.is_alive()]:
            self._ready.remove(pooled)
            await self._discard(pooled.service, "died while pooled")

    async def _discard(self, service: OpenCodeService, why: str) -> None:
        self.stats.replaced += 1
        log.warning("pooled opencode server at %s %s; replacing it", service.state_dir, why)
        await self._stop(service)
        self._wake.set()

    @staticmethod
    async def _stop(service: OpenCodeService) -> None:
        """Stop a server that holds no agent's work: SIGKILL at once (a starting OpenCode may not
        answer SIGTERM yet), then reap the group and check nothing of it is left."""
        try:
            service.kill()
            await service.stop(abort_sessions=False, grace=0.5)
        except Exception as exc:
            log.warning("stopping pooled opencode server failed: %s", exc)
        shutil.rmtree(service.state_dir, ignore_errors=True)


def _cpu_times() -> tuple[int, int] | None:
    """(total, idle) jiffies of all CPUs from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), fields[3] + fields[4]
