"""Engine benchmark: our overheads against raw `opencode serve`, measured in the same run.

    python bench/engine_bench.py [--rounds 3]

- spawn_overhead_ms: our spawn_agent (gate, ledger, server start, session, prompt accepted) until
  the agent's session is accepted, minus a raw `opencode serve` start plus session creation.
- query_session_p50_ms: query_session over the in-memory MCP client.
- concurrent_5_vs_serial: wall time of 5 delegations at once over 5 one after another.
Writes bench/results/engine.json. Not a test: figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")

from fastmcp import Client

from bench.common import median, pctl, write_results
from engine.opencode_config import build_agent_config
from engine.opencode_runner import OpenCodeService
from engine.runtime import Engine
from engine.scripted_model import ScriptedModel
from engine.scripted_model.steps import TextStep
from engine.settings import EngineSettings

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ct_dev_spawn_request.json"
TARGETS = {
    "spawn_overhead_ms": ("<=", 150.0),
    "query_session_p50_ms": ("<=", 5.0),
    "concurrent_5_vs_serial": ("<=", 0.4),
}


def request(project: Path, marker: str) -> dict[str, Any]:
    req = json.loads(FIXTURE.read_text())
    req["project_directory"] = str(project)
    req["instructions"] = f"{marker} {req['instructions']}"
    return req


async def raw_start(model: ScriptedModel, tmp: Path, n: int) -> float:
    """A raw opencode serve start plus session creation, same config shape as ours."""
    work = tmp / f"raw-work-{n}"
    work.mkdir()
    config = build_agent_config(model_base_url=model.base_url, permission={"edit": "allow", "bash": "allow"})
    svc = OpenCodeService(work, tmp / f"raw-state-{n}", config=config)
    t = time.perf_counter()
    await svc.start()
    await svc.client.create_session("bench")
    dt = time.perf_counter() - t
    await svc.stop()
    return dt


async def our_spawn(client: Client, engine: Engine, project: Path, marker: str) -> tuple[float, str]:
    t = time.perf_counter()
    sid = (await client.call_tool("spawn_agent", request(project, marker))).data["session_id"]
    assert engine.ledger is not None
    while True:
        st = engine.ledger.session(sid)
        if st is not None and st.status != "queued" and st.opencode_session_id:
            break
        await asyncio.sleep(0.002)
    return time.perf_counter() - t, sid


async def main_async(rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    os.environ["LEDGER_KEYS_DIR"] = str(tmp / "keys")
    project = tmp / "project"
    project.mkdir()
    r: dict[str, Any] = {"rounds": rounds}
    try:
        with ScriptedModel() as model:
            for i in range(rounds + 10):
                model.add([TextStep(text="done")], match=f"M{i}:")
            for i in range(rounds + 10, rounds + 20):
                model.add([TextStep(text="done", delay=3.0)], match=f"M{i}:")
            model.add([TextStep(text="done")], match="M-warm:")
            await raw_start(model, tmp, 99)  # warm-up: the first start of a process pays for cold caches
            settings = EngineSettings(
                db_path=tmp / "l.db",
                allowed_roots=(str(project),),
                isolated=True,
                work_dir=tmp / "agents",
                max_concurrent=5,
            )
            async with (
                Engine(settings, model_base_url=model.base_url) as engine,
                Client(engine.mcp) as client,
            ):
                _warm, _ = await our_spawn(client, engine, project, "M-warm:")  # warm-up, not measured
                raw, ours = [], []
                for i in range(rounds):  # interleaved, so both see the same machine
                    raw.append(await raw_start(model, tmp, i))
                    dt, sid = await our_spawn(client, engine, project, f"M{i}:")
                    ours.append(dt)
                    await client.call_tool("wait_for_agent", {"session_id": sid, "timeout_seconds": 60})
                lat = []
                for _ in range(300):
                    t = time.perf_counter()
                    await client.call_tool("query_session", {"session_id": sid})
                    lat.append(time.perf_counter() - t)

                async def one(i: int) -> None:
                    s = (await client.call_tool("spawn_agent", request(project, f"M{i}:"))).data["session_id"]
                    await client.call_tool("wait_for_agent", {"session_id": s, "timeout_seconds": 120})

                t = time.perf_counter()
                for i in range(rounds, rounds + 5):
                    await one(i)
                serial = time.perf_counter() - t
                t = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(rounds + 5, rounds + 10)))
                concurrent = time.perf_counter() - t
                # the same with a model that takes 3 s to answer, as hosted models do
                t = time.perf_counter()
                for i in range(rounds + 10, rounds + 15):
                    await one(i)
                serial_slow = time.perf_counter() - t
                t = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(rounds + 15, rounds + 20)))
                concurrent_slow = time.perf_counter() - t
        r["raw_opencode_start_plus_session_ms"] = round(median(raw) * 1000, 1)
        r["our_spawn_until_session_accepted_ms"] = round(median(ours) * 1000, 1)
        r["spawn_overhead_ms"] = round((median(ours) - median(raw)) * 1000, 1)
        r["raw_rounds_ms"] = [round(x * 1000) for x in raw]
        r["our_rounds_ms"] = [round(x * 1000) for x in ours]
        r["note"] = (
            "each OpenCode start costs about 2 CPU-seconds on this 2-core machine, so 5 cold starts "
            "at once are CPU-bound; concurrent_5_vs_serial is bounded by that, not by our queue"
        )
        r["query_session_p50_ms"] = round(median(lat) * 1000, 3)
        r["query_session_p99_ms"] = round(pctl(lat, 0.99) * 1000, 3)
        r["serial_5_s"] = round(serial, 2)
        r["concurrent_5_s"] = round(concurrent, 2)
        r["concurrent_5_vs_serial"] = round(concurrent / serial, 3)
        r["serial_5_with_3s_replies_s"] = round(serial_slow, 2)
        r["concurrent_5_with_3s_replies_s"] = round(concurrent_slow, 2)
        r["concurrent_5_vs_serial_with_3s_replies"] = round(concurrent_slow / serial_slow, 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    r = asyncio.run(main_async(args.rounds))
    r["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    r["met"] = {k: (r[k] <= v) for k, (op, v) in TARGETS.items()}
    path = write_results("engine", r)
    for k in TARGETS:
        print(
            f"{k:28s} {r[k]:>9}  (target {TARGETS[k][0]} {TARGETS[k][1]}) {'ok' if r['met'][k] else 'MISSED'}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
