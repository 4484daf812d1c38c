"""The audit's own findings: what it concluded about the record, each with its evidence.

Severities: `violation` (the audit fails, exit 1), `warning` (worth a look), `info` (context).
Violations, by definition: a re-run that now refuses what was approved or vice versa, an
unverifiable ledger, a budget overrun, a stale session that never reached a terminal state,
retention below the minimum (payloads removed younger than it, or without a prune record).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from engine.audit.canonical import number
from engine.audit.scan import LedgerScan, iso_us
from ledger.entry import datetime_to_us

VIOLATION, WARNING, INFO = "violation", "warning", "info"

#: code -> (severity, one-line meaning); docs/audit.md lists the same table
CODES: dict[str, tuple[str, str]] = {
    "LEDGER_UNVERIFIABLE": (VIOLATION, "the chain, a payload hash or a signed checkpoint does not verify"),
    "NO_CHECKPOINT": (WARNING, "no signed checkpoint covers the ledger"),
    "RERUN_DIFFERS_RECORDED": (VIOLATION, "re-run under the recorded rules reaches another decision"),
    "RERUN_DIFFERS_CURRENT": (VIOLATION, "re-run under the current rules reaches another decision"),
    "RERUN_FINDINGS_DIFFER": (WARNING, "same decision under the recorded rules, different findings"),
    "RULES_CHANGED": (INFO, "the current rules differ from the rules recorded with the decision"),
    "RULES_UNAVAILABLE": (WARNING, "the recorded rules cannot be rebuilt from the ledger"),
    "RERUN_UNAVAILABLE": (WARNING, "the decision cannot be re-run (pruned payloads)"),
    "RERUN_APPROXIMATE": (WARNING, "the decision was re-run without all the facts it recorded"),
    "BUDGET_OVERRUN": (VIOLATION, "spending (own and subtree) above the allocated budget"),
    "SESSION_STALE": (VIOLATION, "a session never reached a terminal state and is past its time"),
    "SESSION_OPEN": (WARNING, "a session has not reached a terminal state yet"),
    "RETENTION_BELOW_MINIMUM": (VIOLATION, "payloads removed before the minimum retention"),
    "PAYLOAD_PRUNED": (INFO, "a hop's payloads were pruned; what they held is unavailable"),
    "ACTION_NOT_COVERED": (WARNING, "a tool ran that the agent's recorded permissions do not allow"),
    "DELEGATION_REFUSED": (INFO, "the gate refused a delegation"),
    "DELEGATION_REVOKED": (INFO, "a delegation was revoked"),
    "REQUEST_UNDECIDED": (
        WARNING,
        "a delegation request has no recorded decision (its engine stopped or could not write in between)",
    ),
    "SESSION_INTERRUPTED": (
        WARNING,
        "a session ended because its engine stopped: its work may be unfinished",
    ),
    "SESSION_ADOPTED": (INFO, "an engine took over a session whose engine had stopped"),
}


def finding(
    code: str,
    message: str,
    *,
    session_id: str | None = None,
    seq: int | None = None,
    expected: Any = None,
    actual: Any = None,
) -> dict[str, Any]:
    return {
        "code": code,
        "severity": CODES[code][0],
        "session_id": session_id,
        "seq": seq,
        "message": message,
        "expected": expected,
        "actual": actual,
    }


def ledger_findings(verify: dict[str, Any], newest_checkpoint: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    if not verify["ok"]:
        out.append(
            finding(
                "LEDGER_UNVERIFIABLE",
                f"verify: {verify['problem']} at seq {verify['first_bad_seq']}: {verify['message']}",
                seq=verify["first_bad_seq"],
                expected=verify["expected"],
                actual=verify["actual"],
            )
        )
    if newest_checkpoint is None:
        out.append(
            finding(
                "NO_CHECKPOINT",
                "no signed checkpoint: nothing proves the chain was not rewritten "
                "and re-hashed (run `ledger checkpoint`)",
            )
        )
    return out


def rerun_findings(hop: dict[str, Any]) -> list[dict[str, Any]]:
    sid, rerun = hop["session_id"], hop["rerun"]
    seq = (hop["evidence"]["decided"] or {}).get("seq")
    if rerun is None:
        return []
    if rerun["status"] == "unavailable":
        if hop["evidence"]["decided"] is None:
            return []  # no decision at all: REQUEST_UNDECIDED says it
        return [
            finding(
                "RERUN_UNAVAILABLE",
                "decision not re-run: " + "; ".join(rerun["notes"]),
                session_id=sid,
                seq=seq,
            )
        ]
    out = []
    old, new = rerun["recorded_rules"], rerun["current_rules"]
    recorded = hop["decision"]
    if not old["available"]:
        out.append(
            finding(
                "RULES_UNAVAILABLE",
                f"not re-run under the recorded rules: {old['reason']}",
                session_id=sid,
                seq=seq,
            )
        )
    approximate = not rerun["exact"]
    if old["available"] and not old["same_decision"]:
        code = "RERUN_APPROXIMATE" if approximate else "RERUN_DIFFERS_RECORDED"
        out.append(
            finding(
                code,
                f"recorded {recorded}, re-run under the recorded rules {old['ruleset_hash']}: "
                f"{old['decision']} ({', '.join(old['violations']) or 'no violation'})",
                session_id=sid,
                seq=seq,
                expected=recorded,
                actual=old["decision"],
            )
        )
    elif old["available"] and not old["same_findings"] and not approximate:
        out.append(
            finding(
                "RERUN_FINDINGS_DIFFER",
                f"same decision ({recorded}); findings added "
                f"{old['added'] or 'none'}, removed {old['removed'] or 'none'}",
                session_id=sid,
                seq=seq,
            )
        )
    recorded_hash = (hop["verdict"] or {}).get("ruleset_hash")
    if new["ruleset_hash"] != recorded_hash:
        out.append(
            finding(
                "RULES_CHANGED",
                f"decided under {recorded_hash}; the current rules are {new['ruleset_hash']}",
                session_id=sid,
                seq=seq,
            )
        )
    if not new["same_decision"]:
        code = "RERUN_APPROXIMATE" if approximate else "RERUN_DIFFERS_CURRENT"
        verb = (
            "what was approved is now refused"
            if recorded == "approved"
            else "what was refused is now approved"
        )
        out.append(
            finding(
                code,
                f"under the current rules {new['ruleset_hash']}, {verb}: {new['decision']} "
                f"({', '.join(new['violations']) or 'no violation'})",
                session_id=sid,
                seq=seq,
                expected=recorded,
                actual=new["decision"],
            )
        )
    elif approximate and rerun["notes"]:
        notes = list(rerun["notes"])
        if old["available"] and not old["same_findings"]:
            notes.append(f"findings added {old['added'] or 'none'}, removed {old['removed'] or 'none'}")
        out.append(finding("RERUN_APPROXIMATE", "; ".join(notes), session_id=sid, seq=seq))
    return out


def hop_findings(
    hop: dict[str, Any], last_us: int, now: datetime, stale_after: timedelta
) -> list[dict[str, Any]]:
    """Budgets, open or stale sessions, pruned payloads, refusals, revocations, uncovered actions."""
    sid, out = hop["session_id"], []
    ev = hop["evidence"]
    if hop["decision"] == "rejected":
        rules = ", ".join(f["rule"] for f in (hop["verdict"] or {}).get("violations", []))
        out.append(
            finding(
                "DELEGATION_REFUSED",
                f"{hop['role']} refused: {rules}",
                session_id=sid,
                seq=(ev["decided"] or {}).get("seq"),
            )
        )
    rev = hop["revocation"]
    if rev is not None:
        how = "directly" if rev["direct"] else f"with the subtree of {rev['via']}"
        out.append(
            finding(
                "DELEGATION_REVOKED",
                f"revoked {how} by {rev['by']}: {rev['reason']}",
                session_id=sid,
                seq=rev["seq"],
            )
        )
    b = hop["budget"]
    for limit, used, allowed in (
        ("tokens", b["subtree"]["tokens"], b["allocated"]["max_tokens"]),
        ("cost_usd", b["subtree"]["cost_usd"], b["allocated"]["max_cost_usd"]),
    ):
        if allowed is not None and used > allowed:
            seqs = [x["seq"] for x in b["exceeded"] if x.get("limit") == limit]
            pruned = [x["seq"] for x in b["exceeded"] if x.get("pruned")]
            recorded = (
                f"; budget.exceeded at seq {seqs}"
                if seqs
                else f"; budget.exceeded entries with pruned payloads at seq {pruned}"
                if pruned
                else "; no budget.exceeded was recorded"
            )
            out.append(
                finding(
                    "BUDGET_OVERRUN",
                    f"{limit}: the subtree used {used:g} of {allowed:g} allocated "
                    f"(own {b['consumed'][limit]:g}){recorded}",
                    session_id=sid,
                    seq=(seqs or pruned or [None])[0],
                    expected=allowed,
                    actual=used,
                )
            )
    if hop["decision"] == "approved" and not hop["terminal"]:
        stale, why = _stale(hop, last_us, now, stale_after)
        out.append(
            finding(
                "SESSION_STALE" if stale else "SESSION_OPEN",
                f"{hop['role']} is still {hop['status']}: {why}",
                session_id=sid,
            )
        )
    if hop["pruned"]:
        out.append(
            finding(
                "PAYLOAD_PRUNED",
                f"payloads pruned: {', '.join(hop['unavailable'])} (their content is "
                "unavailable; hashes and headers remain)",
                session_id=sid,
            )
        )
    for act in hop["actions"]:
        cov = act.get("coverage") or {}
        if act["kind"] == "tool" and not cov.get("covered", True) and act.get("status") == "completed":
            out.append(
                finding(
                    "ACTION_NOT_COVERED",
                    f"tool {act['name']} completed, but {cov.get('by')}",
                    session_id=sid,
                    seq=act["seq"],
                )
            )
    return out


def supervision_findings(hop: dict[str, Any], entries: list[Any]) -> list[dict[str, Any]]:
    """Who supervised the session: each takeover by another engine (``session.adopted``), an end by
    interruption (its engine stopped, and the agent's server with it), a request its engine never
    decided."""
    sid, out = hop["session_id"], []
    for e in entries:
        if e.type == "session.adopted" and e.data is not None:
            out.append(
                finding(
                    "SESSION_ADOPTED",
                    f"engine {e.data.get('engine')} took over from engine "
                    f"{e.data.get('previous_engine') or '(not recorded)'}: {e.data.get('reason')}",
                    session_id=sid,
                    seq=e.seq,
                )
            )
    requested, decided = hop["evidence"].get("requested"), hop["evidence"].get("decided")
    if requested is not None and decided is None:
        out.append(
            finding(
                "REQUEST_UNDECIDED",
                f"the request for {hop['role'] or 'a role'} (seq {requested['seq']}) has no recorded decision: "
                "its engine stopped, or could not write, between the request and the gate's decision; no "
                "agent was started for it",
                session_id=sid,
                seq=requested["seq"],
            )
        )
    if hop["status"] == "interrupted":
        terminal = hop["evidence"].get("terminal") or {}
        out.append(
            finding(
                "SESSION_INTERRUPTED",
                f"{hop['role']} was interrupted: {hop['end_reason'] or '(reason pruned)'}",
                session_id=sid,
                seq=terminal.get("seq"),
            )
        )
    return out


def _stale(hop: dict[str, Any], last_us: int, now: datetime, stale_after: timedelta) -> tuple[bool, str]:
    now_us = datetime_to_us(now)
    idle = (now_us - last_us) / 1e6
    times = hop["times"]
    if times.get("expires_at"):
        expiry = datetime.fromisoformat(str(times["expires_at"]).replace("Z", "+00:00"))
        if expiry < now:
            return True, f"its delegation expired at {times['expires_at']}"
    spawned = (hop["evidence"]["spawned"] or {}).get("recorded_at")
    timeout = times.get("timeout_seconds")
    if spawned and timeout is not None:
        deadline = datetime.fromisoformat(spawned.replace("Z", "+00:00")) + timedelta(
            seconds=float(timeout) + 60
        )
        if deadline < now:
            return True, f"its {timeout:g} s timeout passed at {deadline.isoformat()}"
    if idle >= stale_after.total_seconds():
        return True, f"no entry for {idle:.0f} s (stale after {stale_after.total_seconds():.0f} s)"
    return False, f"last entry {idle:.0f} s ago"


def _us(value: Any, fallback: int) -> int:
    try:
        return datetime_to_us(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except (TypeError, ValueError):
        return fallback


def retention(
    scan: LedgerScan, minimum: timedelta, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The oldest entry against the minimum retention; payloads removed younger than it are violations."""
    now_us, min_us = datetime_to_us(now), int(minimum.total_seconds() * 1e6)
    events = scan.events
    oldest = events[0] if events else None
    oldest_payload = next((e for e in events if e.data is not None), None)
    out: list[dict[str, Any]] = []
    cutoffs = [(p.seq, _us((p.data or {}).get("cutoff"), p.at_us), p) for p in scan.prunes]
    youngest: dict[int, int] = {}
    orphans = []
    for e in events:
        if e.data is not None:
            continue
        by = next((seq for seq, cut, _p in cutoffs if seq > e.seq and e.at_us < cut), None)
        if by is None:
            orphans.append(e.seq)
        else:
            youngest[by] = max(youngest.get(by, 0), e.at_us)
    prunes = []
    minimum_days = minimum.total_seconds() / 86400
    for seq, cut, p in cutoffs:
        d = p.data or {}
        kept_days = (p.at_us - cut) / 86_400e6
        young = youngest.get(seq)
        ok = p.at_us - cut >= min_us
        prunes.append(
            {
                "seq": seq,
                "recorded_at": iso_us(p.at_us),
                "cutoff": d.get("cutoff"),
                "kept_days": number(round(kept_days, 3)),
                "entries": d.get("entries"),
                "archive": d.get("archive"),
                "archive_sha256": d.get("archive_sha256"),
                "ok": ok,
                "youngest_pruned_age_days": None
                if young is None
                else number(round((p.at_us - young) / 86_400e6, 3)),
            }
        )
        if not ok:
            out.append(
                finding(
                    "RETENTION_BELOW_MINIMUM",
                    f"the prune at seq {seq} (cutoff {d.get('cutoff')}) removed "
                    f"payloads younger than {kept_days:.3f} days; the minimum is {minimum_days:g} days",
                    seq=seq,
                    expected=f">= {minimum_days:g} d",
                    actual=f"{kept_days:.3f} d",
                )
            )
    if orphans:
        out.append(
            finding(
                "RETENTION_BELOW_MINIMUM",
                f"{len(orphans)} payload(s) missing with no ledger.pruned "
                f"record covering them (first at seq {orphans[0]})",
                seq=orphans[0],
            )
        )
    age_days = None if oldest is None else (now_us - oldest.at_us) / 86_400e6
    section = {
        "minimum_days": number(minimum_days),
        "oldest_entry": None
        if oldest is None
        else {
            "seq": oldest.seq,
            "recorded_at": iso_us(oldest.at_us),
            "age_days": number(round(age_days or 0.0, 3)),
        },
        "oldest_payload": None
        if oldest_payload is None
        else {"seq": oldest_payload.seq, "recorded_at": iso_us(oldest_payload.at_us)},
        "history_covers_minimum": age_days is not None and age_days * 86400 >= minimum.total_seconds(),
        "pruned_payloads": sum(1 for e in events if e.data is None),
        "prunes": prunes,
        "ok": not out,
    }
    return section, out
