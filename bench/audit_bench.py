"""Audit benchmark: `ledger audit` against `ledger replay` on the same ledger, in the same run.

    python bench/audit_bench.py [--delegations 1000] [--rounds 5]

Builds a ledger of ~1,000 delegations (~10,000 events) the way the engine records them, without
OpenCode: each request is judged by the real gate on the context the engine's own
`build_context` reads from the ledger, then recorded (delegation.requested, gate.decided with its
`evaluated_at` and `facts`); approved hops get agent.spawned, messages, tool calls, permission
decisions, outputs and a terminal event; some are refused (CYC-01 hand-backs, ATT-01: a researcher
holding read scopes only delegating write), some subtrees revoked, some budgets overrun. Then it times the whole audit of the task (scan, verify, every decision re-run,
the canonical JSON report and its hash) against `Ledger.replay()` (what `ledger replay` runs), and
writes bench/results/audit.json with `audit_vs_replay` (target <= 3.0). Figures are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gate
from bench.common import median, write_results
from engine.audit import build_report, render, seal
from engine.audit.forked import verify_file
from engine.audit.hops import hop_node
from engine.audit.report import lineage, select
from engine.audit.rerun import Requests, Rerunner, Rulebook
from engine.audit.scan import scan
from engine.chain_context import build_context
from engine.permissions import PermissionPolicy
from ledger import Ledger, canonical_bytes
from schemas.events import (
    AgentCompleted,
    AgentFailed,
    AgentSpawned,
    BudgetExceeded,
    ConstitutionLoaded,
    DelegationRequested,
    DelegationRevoked,
    GateDecided,
    MessageSent,
    OutputReceived,
    PermissionDecided,
    Tokens,
    ToolCalled,
)
from schemas.requests import SpawnRequest

TARGET = 3.0
TASK = "550e8400-e29b-41d4-a716-446655440000"
ROLES = ("backend_specialist", "frontend_specialist", "researcher", "reviewer", "tester")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def root_request(project: str, n: int) -> dict[str, Any]:
    return {
        "role": "backend_specialist",
        "task_id": TASK,
        "project_directory": project,
        "instructions": f"[bench-{n}] Implement part {n} of the OAuth2 endpoints",
        "expected_output": "a patch",
        "original_task": {
            "task_id": TASK,
            "title": "Implement OAuth2 authentication",
            "description": "OAuth2 endpoints with JWT and tests",
            "requester": "Auctor",
            "requested_at": "2025-10-01T08:00:00Z",
        },
        "cap_origin": {
            "ultimate_authority": "Auctor",
            "original_scope": "Full system development authority",
            "granted_at": "2025-10-01T07:30:00Z",
            "grant_context": "bench charter",
            "scopes": ["repo:src/**#fs", "shell#exec"],
        },
        "delegation_context": {
            "delegator": "Project Manager",
            "delegator_cap": "Delegation authority (Auctor)",
            "delegated_to": "backend_specialist",
            "delegated_cap": "Implement OAuth2 flow",
            "constraints": ["Use Serena tools only", "Return reproducible test plan"],
            "phantom_level": "Delegation/Cap",
            "delegated_at": _stamp(),
            "scopes": ["repo:src/**#fs", "shell#exec"],
            "budget": {"max_tokens": 200_000},
        },
    }


def child_request(parent: dict[str, Any], role: str, n: int, tokens: int) -> dict[str, Any]:
    req = copy.deepcopy(parent)
    pdc = parent["delegation_context"]
    req["role"] = role
    req["instructions"] = f"[bench-{n}] {role}: part {n}"
    scopes = (
        ["repo:src/**#fs/write", "repo:src/**#fs/read"] if role != "researcher" else ["repo:src/**#fs/read"]
    )
    req["delegation_context"] = {
        **pdc,
        "delegator": pdc["delegated_to"],
        "delegator_cap": pdc["delegated_cap"],
        "delegated_to": role,
        "delegated_cap": f"{role} work on part {n}",
        "constraints": [*pdc["constraints"], f"Touch part {n} only"],
        "delegated_at": _stamp(),
        "scopes": scopes,
        "budget": {"max_tokens": tokens},
    }
    return req


class Builder:
    """Records delegations as DelegationService.spawn does, then what a supervised agent does."""

    def __init__(self, led: Ledger, constitution: gate.Constitution, project: str) -> None:
        self.led, self.constitution, self.project = led, constitution, project
        self.known = frozenset(ROLES)
        self.n = 0
        led.append(
            "ledger",
            ConstitutionLoaded(
                ruleset_hash=constitution.ruleset_hash,
                profile=constitution.profile,
                document={"rules_version": gate.RULES_VERSION, **constitution.model_dump(mode="json")},
            ),
        )

    def spawn(self, raw: dict[str, Any], parent: str | None, depth: int) -> str | None:
        self.n += 1
        sid = f"{self.n:08d}-bench-{hashlib.sha256(str(self.n).encode()).hexdigest()[:12]}"
        led = self.led
        led.append(sid, DelegationRequested(request=raw, via="mcp", caller=parent, parent_session_id=parent))
        ctx = build_context(led, raw, parent, self.known)
        now = datetime.now(UTC)
        verdict = gate.evaluate(raw, ctx, now, self.constitution)
        d = ctx.directory
        facts = {
            "known_roles": sorted(self.known),
            "parents": [h.session_id for h in ctx.parents],
            "directory": None
            if d is None
            else {"path": d.path, "exists": d.exists, "is_dir": d.is_dir, "real_path": d.real_path},
        }
        led.append(
            sid,
            GateDecided(
                verdict=verdict,
                task_id=raw["task_id"],
                role=raw["role"],
                parent_session_id=parent,
                depth=depth,
                request_hash=hashlib.sha256(canonical_bytes(raw)).hexdigest(),
                evaluated_at=now,
                facts=facts,
            ),
        )
        if verdict.decision != "approved":
            return None
        req = SpawnRequest.model_validate(raw)
        root = sid if parent is None else led.session(parent).root_session_id  # type: ignore[union-attr]
        budget = req.delegation_context.budget
        led.append(
            sid,
            AgentSpawned(
                session_id=sid,
                task_id=req.task_id,
                role=req.role,
                parent_session_id=parent,
                root_session_id=root,
                depth=depth,
                principal=req.delegation_context.delegated_to,
                delegator=req.delegation_context.delegator,
                project_directory=self.project,
                max_tokens=budget.max_tokens if budget else None,
                timeout_seconds=900.0,
                permissions=PermissionPolicy.from_request(req).rules,
                pid=1000 + self.n,
            ),
        )
        led.append(sid, MessageSent(session_id=sid, text=req.instructions))
        led.append(
            sid,
            ToolCalled(
                session_id=sid,
                tool="read",
                call_id=f"c{self.n}a",
                input={"filePath": "src/a.py"},
                output="x = 1\n",
            ),
        )
        led.append(
            sid,
            PermissionDecided(
                session_id=sid,
                permission="bash",
                patterns=["pytest -q"],
                reply="once",
                reason="scope grants shell/exec",
            ),
        )
        return sid

    def work(self, sid: str, tokens: int, *, overrun: bool = False, shell: bool = False) -> None:
        led = self.led
        led.append(
            sid,
            ToolCalled(
                session_id=sid,
                tool="write",
                call_id=f"w{sid[:8]}",
                input={"filePath": "src/part.py", "content": "def f():\n    return 1\n"},
                output="Wrote file successfully.",
            ),
        )
        led.append(
            sid,
            OutputReceived(
                session_id=sid,
                text="Running the tests now.",
                tokens=Tokens(input=tokens // 10, output=tokens // 20),
                cost_usd=0.0012,
            ),
        )
        if shell:  # only the root's scopes grant shell#exec; the others search instead
            led.append(
                sid,
                ToolCalled(
                    session_id=sid,
                    tool="bash",
                    call_id=f"b{sid[:8]}",
                    input={"command": "pytest -q"},
                    output="3 passed in 0.05s",
                ),
            )
        else:
            led.append(
                sid,
                ToolCalled(
                    session_id=sid,
                    tool="grep",
                    call_id=f"g{sid[:8]}",
                    input={"pattern": "def f"},
                    output="src/part.py:1",
                ),
            )
        used = Tokens(input=tokens * 3 if overrun else tokens // 2, output=tokens // 4)
        led.append(
            sid,
            OutputReceived(
                session_id=sid,
                text="Done: part implemented with tests.",
                tokens=used,
                cost_usd=round(used.total * 3e-6, 6),
            ),
        )
        state = led.session(sid)
        if overrun and state is not None and state.max_tokens is not None:
            led.append(
                sid,
                BudgetExceeded(
                    session_id=sid,
                    limit="tokens",
                    allowed=state.max_tokens,
                    used=state.subtree_tokens,
                    charged_to=sid,
                ),
            )
            led.append(sid, AgentFailed(session_id=sid, error="budget exceeded", kind="budget"))
            return
        led.append(sid, AgentCompleted(session_id=sid, summary="part implemented"))


def build(path: Path, delegations: int) -> tuple[Ledger, gate.Constitution, dict[str, int]]:
    project = tempfile.mkdtemp(prefix="audit-bench-project-")
    constitution = gate.load_constitution(f'allowed_roots = ["{project}"]\nmax_depth = 3\n', source="bench")
    led = Ledger.init(path, durable=False)
    b = Builder(led, constitution, project)
    stats = {"roots": 0, "refused": 0, "revoked_roots": 0, "overruns": 0}
    while b.n < delegations:
        stats["roots"] += 1
        raw = root_request(project, b.n)
        root = b.spawn(raw, None, 0)
        assert root is not None, "the bench's root delegation must be approved"
        for i, role in enumerate(("tester", "reviewer", "researcher")):
            if b.n >= delegations:
                break
            child_raw = child_request(raw, role, b.n, 40_000)
            child = b.spawn(child_raw, root, 1)
            for j in range(2):
                if b.n >= delegations or child is None:
                    break
                # every 20th grandchild hands work back to the root's role: refused (CYC-01)
                back = (b.n % 20) == 0
                grand_role = (
                    "backend_specialist" if back else ("frontend_specialist" if j == 0 else "researcher")
                )
                if grand_role == role:
                    grand_role = "frontend_specialist"
                grand = b.spawn(child_request(child_raw, grand_role, b.n, 8_000), child, 2)
                if grand is None:
                    stats["refused"] += 1
                    continue
                overrun = (b.n % 37) == 0
                stats["overruns"] += overrun
                b.work(grand, 4_000, overrun=overrun)
            if child is not None:
                b.work(child, 10_000 + i)
        if stats["roots"] % 25 == 0:  # revoke the whole subtree of every 25th root
            subtree = [s.session_id for s in led.sessions(root_session_id=root) if s.session_id != root]
            led.append(
                root,
                DelegationRevoked(session_id=root, by="operator", reason="bench revocation", subtree=subtree),
            )
            stats["revoked_roots"] += 1
        else:
            b.work(root, 20_000, shell=True)
    led.checkpoint()
    return led, constitution, stats


def _children_cpu() -> float:
    """CPU time of the reaped children (the audit's forked verify and re-runs)."""
    t = os.times()
    return t.children_user + t.children_system


def measure(led: Ledger, constitution: gate.Constitution, rounds: int) -> dict[str, Any]:
    """Replay and audit alternately, `rounds` times each (so both share the machine's mood); medians of
    wall time, and of CPU time (steadier when other work shares the 2 cores). The audit's CPU time
    is its own process's plus its forked children's (verify, a share of the re-runs)."""
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
        envelope = seal(build_report(led, TASK, current=constitution, now=now))
        render(envelope, "json")
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
    """Median wall time of `work()` in ms (the garbage collector paused, as build_report runs)."""
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
    the main core and what it hands to the second; and the whole audit with no child at all."""
    sc = scan(led, fork=False)
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

    def sequential() -> None:
        mode = os.environ.get("LEDGER_AUDIT_FORK")
        os.environ["LEDGER_AUDIT_FORK"] = "0"
        try:
            render(seal(build_report(led, TASK, current=constitution, now=now)), "json")
        finally:
            if mode is None:
                del os.environ["LEDGER_AUDIT_FORK"]
            else:
                os.environ["LEDGER_AUDIT_FORK"] = mode

    envelope = seal(report)
    parts = {
        "scan_read_decode_fold": _timed(lambda: scan(led, fork=False, verify=False), repeat),
        "verify": _timed(
            lambda: verify_file(led.path, last, checkpoints=cps, verifier=verifier, origin=led.origin),
            repeat,
        ),
        "reruns": _timed(reruns, repeat),
        "hop_nodes": _timed(hops, repeat),
        "seal_report_bytes_sha256": _timed(lambda: seal(report), repeat),
        "render_json": _timed(lambda: render(envelope, "json"), repeat),
        "render_html": _timed(lambda: render(envelope, "html"), 1),
    }
    replay_ms = _timed(led.replay, repeat)
    sequential_ms = _timed(sequential, repeat)
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
        help="the audit's children: when a core is idle (auto), always (on) or never (off)",
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
        "what": "audit = build_report (read + decode + fold of the chain while a forked child verifies it, "
        "every decision re-run (a share in a second child), hops, findings) + seal (canonical bytes, "
        "SHA-256) + render json; replay = Ledger.replay(); same durable ledger, alternated, wall time, "
        "median of the per-round ratios; CPU figures count the audit's children; breakdown: each part "
        "timed alone, and the whole audit with no child (LEDGER_AUDIT_FORK=0)",
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
            "json_bytes": len(render(envelope, "json")),
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
