"""Build the compliance audit report of one task from the ledger alone, hash it, and issue it.

report = build_report(ledger, "task-1", current=constitution)
envelope = seal(report)                  # {"report": ..., "report_sha256": ...}
issued = issue(ledger, envelope)         # audit.issued + a signed checkpoint naming the hash
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import gate
from engine.audit import findings as fnd
from engine.audit.canonical import Prechecked, fast_canonical, number, report_bytes
from engine.audit.helper import Helper, Reruns
from engine.audit.hops import hop_node
from engine.audit.rerun import Requests, Rerunner, Rulebook
from engine.audit.scan import LedgerScan, ScanPoint, iso_us, scan
from ledger import Ledger
from ledger.checkpoint import parse_checkpoint_body
from ledger.entry import datetime_to_us
from schemas.events import AuditIssued

FORMAT = "delegation-ledger/audit-report/v1"


class AuditInputError(ValueError):
    """A task or session the ledger does not hold; the message lists the ones it does."""


def _known_tasks(sc: LedgerScan) -> list[str]:
    return sorted({t for s in sc.by_stream if s != "ledger" and (t := sc.task_of(s))})


def select(sc: LedgerScan, task_id: str | None, session_id: str | None) -> tuple[str, list[str]]:
    """(task id, streams of the task, or of the subtree of `session_id`, parents before children)."""
    children: dict[str | None, list[str]] = {}
    firsts = sc.firsts
    streams = [
        s
        for s in sc.by_stream
        if s in sc.states
        or (
            s != "ledger"
            and (
                (s, "delegation.requested") in firsts
                or (s, "gate.decided") in firsts
                or (s, "agent.spawned") in firsts
            )
        )
    ]
    for s in streams:
        children.setdefault(sc.parent_of(s), []).append(s)
    if session_id is not None:
        if session_id not in streams:
            sessions = [s for s in streams if task_id is None or sc.task_of(s) == task_id]
            raise AuditInputError(
                f"unknown session {session_id!r}"
                + (f" in task {task_id!r}" if task_id else "")
                + f"; sessions: {', '.join(sessions[:30]) or 'none'}"
            )
        found = sc.task_of(session_id)
        if task_id is not None and found != task_id:
            raise AuditInputError(f"session {session_id!r} belongs to task {found!r}, not {task_id!r}")
        task_id = found or task_id or ""
        roots = [session_id]
    else:
        if task_id is None:
            raise AuditInputError(
                f"name a task id; task ids in the ledger: {', '.join(_known_tasks(sc)) or 'none'}"
            )
        members = {s for s in streams if sc.task_of(s) == task_id}
        if not members:
            raise AuditInputError(
                f"unknown task id {task_id!r}; task ids in the ledger: "
                f"{', '.join(_known_tasks(sc)) or 'none'}"
            )
        roots = [s for s in streams if s in members and sc.parent_of(s) not in members]
    out: list[str] = []
    seen: set[str] = set()
    stack = list(reversed(roots))
    while stack:  # pre-order: a parent always comes before its children
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        out.append(s)
        stack.extend(reversed(children.get(s, [])))
    return task_id, out


def lineage(sc: LedgerScan, stream: str) -> list[str]:
    """The sessions above `stream`, root first (cycle-safe)."""
    out: list[str] = []
    parent = sc.parent_of(stream)
    while parent and parent not in out and parent != stream:
        out.append(parent)
        parent = sc.parent_of(parent)
    return out[::-1]


def _window(since: datetime | None, until: datetime | None) -> tuple[int, int]:
    return (datetime_to_us(since) if since else -(2**62), datetime_to_us(until) if until else 2**62)


def _checkpoint(ledger: Ledger, sc: LedgerScan) -> dict[str, Any] | None:
    stored = sc.checkpoints
    if not stored:
        return None
    cp = stored[-1]
    body = cp.note.split("\n\n", 1)[0] + "\n"
    try:
        origin, size, root, head = parse_checkpoint_body(body)
    except ValueError:  # a malformed note is what verify reports; here we show the note as it is
        origin, size, root, head = None, cp.size, b"", None
    event = next(
        (
            e
            for e in reversed(sc.events)
            if e.type == "checkpoint.signed" and e.data and e.data.get("size") == cp.size
        ),
        None,
    )
    return {
        "size": size,
        "origin": origin,
        "root": root.hex(),
        "head": None if head is None else head.hex(),
        "note": cp.note,
        "covers_head": cp.size == sc.head.size,
        "trigger": None if event is None else event.data.get("trigger"),  # type: ignore[union-attr]
        "seq": None if event is None else event.seq,
        "recorded_at": None if event is None else iso_us(event.at_us),
    }


def _rulesets(sc: LedgerScan, rules: Rulebook, hops: list[dict[str, Any]]) -> dict[str, Any]:
    used: dict[str, int] = {}
    for h in hops:
        if h["verdict"]:
            used[h["verdict"]["ruleset_hash"]] = used.get(h["verdict"]["ruleset_hash"], 0) + 1
    loaded = []
    for ev in sc.constitutions:
        d = ev.data or {}
        rebuilt, problem = rules.recorded(str(d.get("ruleset_hash")))
        loaded.append(
            {
                "ruleset_hash": d.get("ruleset_hash"),
                "profile": d.get("profile"),
                "source": d.get("source"),
                "seq": ev.seq,
                "hash": ev.hash,
                "recorded_at": iso_us(ev.at_us),
                "rebuilt": rebuilt is not None,
                "problem": problem,
            }
        )
    return {
        "current": {
            "ruleset_hash": rules.current.ruleset_hash,
            "profile": rules.current.profile,
            "source": rules.current_source,
            "rules_version": gate.RULES_VERSION,
        },
        "loaded": loaded,
        "in_verdicts": [{"ruleset_hash": k, "decisions": v} for k, v in sorted(used.items())],
    }


def _refusal(hop: dict[str, Any]) -> dict[str, Any]:
    """A refused delegation, as listed apart from the tree (its hop in the tree has everything else)."""
    decided = hop["evidence"]["decided"] or {}
    return {
        "session_id": hop["session_id"],
        "role": hop["role"],
        "principal": hop["principal"],
        "delegator": hop["delegator"],
        "parent_session_id": hop["parent_session_id"],
        "depth": hop["depth"],
        "requested_at": hop["times"]["requested_at"],
        "decided_seq": decided.get("seq"),
        "decided_hash": decided.get("hash"),
        "violations": (hop["verdict"] or {}).get("violations", []),
        "warnings": [f["rule"] for f in (hop["verdict"] or {}).get("warnings", [])],
    }


def _tree(hops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {h["session_id"]: h for h in hops}
    roots = []
    for h in hops:
        parent = by_id.get(h["parent_session_id"] or "")
        (parent["children"] if parent is not None else roots).append(h)
    return roots


#: what a hop gains once the re-runs are in: its re-run, its children (hops walked on their own); and
#: its evidence, vouched for (entries' coordinates, `scan.Ev.evidence`: text, a flag and a seq)
_FILLED_LATER = ("children", "evidence", "rerun")


def _build_report(
    ledger: Ledger,
    task_id: str | None = None,
    *,
    session_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    current: gate.Constitution | None = None,
    current_source: str | None = None,
    retention_min: timedelta = timedelta(days=180),
    stale_after: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    prechecked: Prechecked | None = None,
    held: list[Any] | None = None,
) -> dict[str, Any]:
    """`build_report`'s work (see there); `prechecked`: walk the hops' numbers for the encoder while the
    helper finishes; `held`: the decoded ledger is put there rather than freed on return."""
    now = now or datetime.now(UTC)
    current_rules = current if current is not None else gate.default_constitution()
    point = ScanPoint.of(ledger)
    helper = Helper.start(point, current_rules, current_source)  # it verifies while this process scans
    try:
        sc = scan(ledger, point=point, verify=helper is None)
        task_id, streams = select(sc, task_id, session_id)
        window = _window(since, until)
        requests = Requests(sc)
        rules = Rulebook.from_scan(sc, current_rules, current_source)
        rerunner = Rerunner(sc, requests, rules)
        found: list[dict[str, Any]] = []
        hops: list[dict[str, Any]] = []
        ancestors: dict[str, list[str]] = {}
        reruns = Reruns(rerunner, [s for s in streams if sc.in_window(s, window)], helper)
        for s in streams:
            ancestors[s] = lineage(sc, s)
            hops.append(hop := hop_node(sc, requests, s, ancestors[s], window))
            if prechecked is not None:  # its numbers for the encoder, while fresh (all but what comes later)
                prechecked.walk(hop, _FILLED_LATER)
                prechecked.vouch(hop["evidence"])
        in_window = {h["session_id"] for h in hops if h["in_window"]}
        keep = set(in_window)
        for h in hops:  # ancestors of in-window hops stay as context
            if h["session_id"] in in_window:
                keep.update(ancestors[h["session_id"]])
        hops = [h for h in hops if h["session_id"] in keep]
        audited = [h for h in hops if h["in_window"]]
        for h in audited:  # what needs no re-run first: the helper may still be re-running
            entries = sc.by_stream[h["session_id"]]
            found += fnd.hop_findings(h, entries[-1].at_us, now, stale_after)
            found += fnd.supervision_findings(h, entries)
        newest = _checkpoint(ledger, sc)
        kept, retention_findings = fnd.retention(sc, retention_min, now)
        sc.release()  # the tree is built: the decoded ledger is freed while the helper finishes
        done = reruns.result()
    finally:
        if helper is not None:
            helper.close()  # no-op once answered; otherwise the worker is killed and reaped
    if held is not None:
        held += [sc, requests, rerunner, reruns]
    for h in hops:
        h["rerun"] = done.get(h["session_id"])
        if prechecked is not None and h["session_id"] in reruns.plain:
            prechecked.vouch(h["rerun"])  # walked by the helper (on its copy): plain
    for h in audited:
        found += fnd.rerun_findings(h)
    verify = sc.verified().to_json()  # the helper's, or verified now if it did not answer
    found = fnd.ledger_findings(verify, newest) + found + retention_findings
    found.sort(
        key=lambda f: ({"violation": 0, "warning": 1, "info": 2}[f["severity"]], f["seq"] or 0, f["code"])
    )
    root_request = requests.raw(hops[0]["session_id"]) if hops else None
    refused = [_refusal(h) for h in hops if h["decision"] == "rejected" and h["in_window"]]
    roots = [h for h in audited if h["parent_session_id"] is None or h["parent_session_id"] not in keep]
    counts = {s: sum(1 for f in found if f["severity"] == s) for s in ("violation", "warning", "info")}
    return {
        "format": FORMAT,
        "generated_at": iso_us(datetime_to_us(now)),
        "scope": {
            "task_id": task_id,
            "session_id": session_id,
            "since": since and iso_us(datetime_to_us(since)),
            "until": until and iso_us(datetime_to_us(until)),
            "retention_min_days": number(retention_min.total_seconds() / 86400),
            "stale_after_seconds": number(stale_after.total_seconds()),
        },
        "ledger": {
            "ledger_id": ledger.ledger_id,
            "origin": ledger.origin,
            "head": {"size": sc.head.size, "hash": sc.head.hex},
            "verify": verify,
            "newest_checkpoint": newest,
            "checkpoints": len(sc.checkpoints),
            "unreadable_payloads": sorted(set(sc.unreadable)),
        },
        "rulesets": _rulesets(sc, rules, audited),
        "task": {
            "task_id": task_id,
            "original_task": (root_request or {}).get("original_task"),
            "cap_origin": (root_request or {}).get("cap_origin"),
        },
        "tree": _tree(hops),
        "refused": refused,
        "retention": kept,
        "prior_audits": [
            {"seq": e.seq, "hash": e.hash, "recorded_at": iso_us(e.at_us), **(e.data or {})}
            for e in sc.audits
            if (e.data or {}).get("scope", {}).get("task_id") == task_id
        ],
        "findings": found,
        "summary": {
            "hops": len(audited),
            "roots": len(roots),
            "approved": sum(1 for h in audited if h["decision"] == "approved"),
            "refused": len(refused),
            "revoked": sum(1 for h in audited if h["revocation"]),
            "open": sum(1 for h in audited if h["decision"] == "approved" and not h["terminal"]),
            "tool_calls": sum(1 for h in audited for a in h["actions"] if a["kind"] == "tool"),
            "permission_decisions": sum(
                1 for h in audited for a in h["actions"] if a["kind"] == "permission"
            ),
            "tokens": sum(h["budget"]["consumed"]["tokens"] for h in audited),
            "cost_usd": number(round(sum(h["budget"]["consumed"]["cost_usd"] for h in audited), 9)),
            "reruns": {
                st: sum(1 for h in audited if (h["rerun"] or {}).get("status") == st)
                for st in ("reproduced", "approximate", "differs", "unavailable")
            },
            "violations": counts["violation"],
            "warnings": counts["warning"],
            "infos": counts["info"],
            "result": "fail" if counts["violation"] else "pass",
        },
    }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The scan keeps every decoded payload alive: cyclic GC passes over that growing heap cost more
    than the audit itself (2-3x on 10,000 events), and the audit makes no cycles worth collecting.
    On the way out, what it allocated (the report: some 50,000 containers) is moved to the oldest
    generation (`gc.freeze()` then `gc.unfreeze()`, two list splices) rather than left in the youngest:
    the first allocation after `gc.enable()` would otherwise walk all of it (15-25 ms), and the next
    middle-generation pass again, to find nothing. Cycles among them, if any, are left to the next
    full collection (none if the caller froze objects itself: `unfreeze` would thaw them too)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():  # a caller's own frozen objects are left frozen
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def build_report(
    ledger: Ledger,
    task_id: str | None = None,
    *,
    session_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    current: gate.Constitution | None = None,
    current_source: str | None = None,
    retention_min: timedelta = timedelta(days=180),
    stale_after: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The audit report (a JSON-ready dict) of `task_id` (or of the subtree of `session_id`), built from
    the ledger alone; `current` is the constitution to re-run decisions under besides the recorded one
    (default: the built-in one). AuditInputError for an unknown task or session."""
    with _gc_paused():
        return _build_report(
            ledger,
            task_id,
            session_id=session_id,
            since=since,
            until=until,
            current=current,
            current_source=current_source,
            retention_min=retention_min,
            stale_after=stale_after,
            now=now,
        )


class Sealed(dict[str, Any]):
    """The envelope `{"report", "report_sha256"}`; remembers the report's canonical bytes."""

    report_canonical: bytes | None = None


def report_sha256(report: dict[str, Any]) -> str:
    """SHA-256 (hex) of the report's RFC 8785 canonical bytes."""
    return hashlib.sha256(report_bytes(report)).hexdigest()


def seal(report: dict[str, Any]) -> Sealed:
    """The report with its own hash beside it: what `--format json` prints."""
    with _gc_paused():
        data = report_bytes(report)
    return _sealed(report, data, hashlib.sha256(data).hexdigest())


def _sealed(report: dict[str, Any], data: bytes, sha256: str) -> Sealed:
    envelope = Sealed(report=report, report_sha256=sha256)
    envelope.report_canonical = data
    return envelope


def build_sealed(ledger: Ledger, task_id: str | None = None, **options: Any) -> Sealed:
    """`seal(build_report(ledger, task_id, **options))` in one call, the same bytes (`options`: those
    of `build_report`): the hops' numbers are walked for the encoder while the helper finishes its
    re-runs, and the encoder walks only what came after."""
    prechecked = Prechecked()
    held: list[Any] = []
    with _gc_paused():
        report = _build_report(
            ledger,
            task_id,
            **options,
            prechecked=prechecked,
            held=held,
        )
        data = fast_canonical(report, prechecked)
        digest = _Digest(data)  # hashlib lets go of the GIL: what is left of the scan is freed meanwhile
        held.clear()
        return _sealed(report, data, digest.hexdigest())


class _Digest(threading.Thread):
    """The SHA-256 of bytes, computed on a thread of its own."""

    def __init__(self, data: bytes) -> None:
        super().__init__(name="audit-digest", daemon=True)
        self.data, self.digest = data, ""
        self.start()

    def run(self) -> None:
        self.digest = hashlib.sha256(self.data).hexdigest()

    def hexdigest(self) -> str:
        self.join()
        return self.digest


def issue(ledger: Ledger, envelope: dict[str, Any], by: str | None = None) -> dict[str, Any]:
    """Record the report's hash (audit.issued) and sign a checkpoint naming it; returns where."""
    report, sha = envelope["report"], envelope["report_sha256"]
    scope = {**report["scope"], "ledger_head": report["ledger"]["head"]}
    entry = ledger.append("ledger", AuditIssued(report_sha256=sha, scope=scope, by=by))
    cp = ledger.checkpoint(trigger="audit", audit_report_sha256=sha)
    return {
        "seq": entry.seq,
        "hash": entry.hash.hex(),
        "report_sha256": sha,
        "checkpoint": {"size": cp.size, "root": cp.root.hex(), "head": cp.head.hex(), "note": cp.note},
    }
