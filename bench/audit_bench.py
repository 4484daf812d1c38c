"""Audit benchmark: `ledger audit` against `ledger replay` on the same ledger, in the same run.

    python bench/audit_bench.py [--delegations 1000] [--rounds 7] [--fork auto|on|off]

Builds a ledger of ~1,000 delegations (~10,000 events) the way the engine records them, without
OpenCode (bench/audit_ledger.py). Then it times the whole audit of the task (scan, verify, every
decision re-run, the canonical JSON report and its hash) against `Ledger.replay()` (what `ledger
replay` runs), and writes bench/results/audit.json with `audit_vs_replay` (target <= 3.0), the CPU
times (the audit's helper included) and a breakdown of the audit's parts. Figures are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gate
from bench.audit_ledger import TASK, build
from bench.common import median, write_results
from engine.audit import build_report, build_sealed, forked, render_bytes, seal
from engine.audit.hops import hop_node
from engine.audit.report import lineage, select
from engine.audit.rerun import Requests, Rerunner, Rulebook
from engine.audit.scan import scan, verify_file
from ledger import Ledger

TARGET = 3.0


def _children_cpu() -> float:
    """CPU time of the audit's helper (the verify and the re-runs): its live worker process, and any
    worker reaped (retired) since."""
    t = os.times()
    return t.children_user + t.children_system + forked.cpu_seconds()


def measure(led: Ledger, constitution: gate.Constitution, rounds: int) -> dict[str, Any]:
    """Replay and audit alternately, `rounds` times each (so both share the machine's mood); medians of
    wall time, and of CPU time (steadier when other work shares the 2 cores). The audit's CPU time
    is its own process's plus its helper's (the verify and the re-runs)."""
    now = datetime.now(UTC)
    wall: dict[str, list[float]] = {"replay": [], "audit": [], "ratio": []}
    cpu: dict[str, list[float]] = {"replay": [], "audit": [], "audit_main": [], "ratio": []}
    envelope: dict[str, Any] = {}
    for _ in range(rounds):
        envelope = {}  # the previous round's report is freed before the clocks start: not this round's work
        gc.collect()
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        led.replay()
        t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
        envelope = build_sealed(led, TASK, current=constitution, now=now)
        render_bytes(envelope, "json")
        t2, c2, k2 = time.perf_counter(), time.process_time(), _children_cpu()
        wall["replay"].append(t1 - t0)
        wall["audit"].append(t2 - t1)
        wall["ratio"].append((t2 - t1) / (t1 - t0))
        replay_cpu, audit_cpu = (c1 - c0) + (k1 - k0), (c2 - c1) + (k2 - k1)
        cpu["replay"].append(replay_cpu)
        cpu["audit"].append(audit_cpu)
        cpu["audit_main"].append(c2 - c1)
        cpu["ratio"].append(audit_cpu / replay_cpu)
    return {
        "wall": {k: median(v) for k, v in wall.items()},
        "cpu": {k: median(v) for k, v in cpu.items()},
        "ratios": [round(r, 3) for r in wall["ratio"]],
        "envelope": envelope,
        "breakdown": breakdown(led, constitution, now, max(3, rounds // 2)),
    }


def _timed(work: Any, repeat: int) -> float:
    """Median wall time of `work()` in ms, what it returns freed included (the garbage collector
    paused, as build_report runs)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            work()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return round(median(times) * 1000, 1)


def breakdown(led: Ledger, constitution: gate.Constitution, now: datetime, repeat: int) -> dict[str, Any]:
    """The audit's parts, each timed on its own (sequentially, in this process): what the audit does on
    the main core and what it hands to the second; and the whole audit with no child at all (first,
    before the parts' inputs are held in memory)."""

    def sequential() -> None:
        mode = os.environ.get("LEDGER_AUDIT_FORK")
        os.environ["LEDGER_AUDIT_FORK"] = "0"
        try:
            render_bytes(build_sealed(led, TASK, current=constitution, now=now), "json")
        finally:
            if mode is None:
                del os.environ["LEDGER_AUDIT_FORK"]
            else:
                os.environ["LEDGER_AUDIT_FORK"] = mode

    replay_ms = _timed(led.replay, repeat)
    sequential_ms = _timed(sequential, repeat)
    sc = scan(led)
    sc.verified()
    _, streams = select(sc, TASK, None)
    cps, verifier = led.checkpoints(), led.verifier()
    last = led.head().size
    rules = Rulebook.from_scan(sc, constitution, None)
    lineages = {s: lineage(sc, s) for s in streams}
    window = (-(2**62), 2**62)
    report = build_report(led, TASK, current=constitution, now=now)

    def reruns() -> None:
        rr = Rerunner(sc, Requests(sc), rules)
        for s in streams:
            rr.rerun(s)

    def hops() -> None:
        requests = Requests(sc)
        for s in streams:
            hop_node(sc, requests, s, lineages[s], window)

    envelope = seal(report)
    parts = {
        "scan_read_decode_fold": _timed(lambda: scan(led, verify=False), repeat),
        "verify": _timed(
            lambda: verify_file(led.path, last, checkpoints=cps, verifier=verifier, origin=led.origin),
            repeat,
        ),
        "reruns": _timed(reruns, repeat),
        "hop_nodes": _timed(hops, repeat),
        "seal_report_bytes_sha256": _timed(lambda: seal(report), repeat),
        "render_json": _timed(lambda: render_bytes(envelope, "json"), repeat),
        "render_html": _timed(lambda: render_bytes(envelope, "html"), 1),
    }
    return {
        "parts_ms": parts,
        "replay_ms": replay_ms,
        "audit_sequential_ms": sequential_ms,
        "audit_sequential_vs_replay": round(sequential_ms / replay_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--delegations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="audit")
    parser.add_argument(
        "--fork",
        choices=("auto", "on", "off"),
        default="auto",
        help="the audit's helper: when a core is idle (auto), always (on) or never (off)",
    )
    args = parser.parse_args()
    if args.fork != "auto":
        os.environ["LEDGER_AUDIT_FORK"] = "1" if args.fork == "on" else "0"
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        os.environ["LEDGER_KEYS_DIR"] = str(Path(tmp) / "keys")
        t0 = time.perf_counter()
        led, constitution, stats = build(Path(tmp) / "bench.db", args.delegations)
        led.close()
        build_s = time.perf_counter() - t0
        with Ledger.open(Path(tmp) / "bench.db", create=False) as led:  # as `ledger replay`/`audit` open it
            m = measure(led, constitution, args.rounds)
            events = led.head().size
    envelope = m["envelope"]
    summary = envelope["report"]["summary"]
    ratio, cpu_ratio = m["wall"]["ratio"], m["cpu"]["ratio"]
    results = {
        "benchmark": "audit",
        "case": {
            "delegations": args.delegations,
            "events": events,
            **stats,
            "rounds": args.rounds,
            "fork": args.fork,
            "build_s": round(build_s, 1),
        },
        "what": "audit = build_sealed (the chain read, decoded and folded once, verified (by the helper, a "
        "worker forked at the first audit and kept, when a core is idle; else in the same read), every "
        "decision re-run (by the helper, what it has not done when hurried by the audit), hops, findings, "
        "canonical bytes, SHA-256) + render json; replay = Ledger.replay(); same durable ledger, "
        "alternated, wall time, median of the per-round ratios (the first round forks the worker); CPU "
        "figures count the helper's; breakdown: each part timed alone, and the whole audit with no "
        "helper (LEDGER_AUDIT_FORK=0)",
        "audit_ms": round(m["wall"]["audit"] * 1000, 1),
        "replay_ms": round(m["wall"]["replay"] * 1000, 1),
        "audit_vs_replay": round(ratio, 3),
        "audit_vs_replay_rounds": m["ratios"],
        "audit_cpu_ms": round(m["cpu"]["audit"] * 1000, 1),
        "replay_cpu_ms": round(m["cpu"]["replay"] * 1000, 1),
        "audit_vs_replay_cpu": round(cpu_ratio, 3),
        "audit_vs_replay_sequential": m["breakdown"]["audit_sequential_vs_replay"],
        "audit_main_cpu_ms": round(m["cpu"]["audit_main"] * 1000, 1),
        "audit_children_cpu_ms": round((m["cpu"]["audit"] - m["cpu"]["audit_main"]) * 1000, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "breakdown": m["breakdown"],
        "report": {
            "hops": summary["hops"],
            "refused": summary["refused"],
            "revoked": summary["revoked"],
            "reruns": summary["reruns"],
            "violations": summary["violations"],
            "json_bytes": len(render_bytes(envelope, "json")),
        },
        "targets": {"audit_vs_replay": f"<= {TARGET}"},
        "met": {"audit_vs_replay": ratio <= TARGET},
    }
    path = write_results(args.out, results)
    print(
        f"audit {results['audit_ms']} ms vs replay {results['replay_ms']} ms on {events} events "
        f"({args.delegations} delegations): audit_vs_replay = {results['audit_vs_replay']} "
        f"(CPU time incl. children: {results['audit_vs_replay_cpu']}; with no child: "
        f"{results['audit_vs_replay_sequential']}; load {results['load_average_1m']}) "
        f"(target <= {TARGET}); reruns {summary['reruns']}; wrote {path}"
    )


if __name__ == "__main__":
    main()
