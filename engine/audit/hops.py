"""One node of the audited delegation tree: who delegated what to whom, under which constraints,
what the gate decided, what the agent did and spent, and the entries that prove each of it."""

from __future__ import annotations

from typing import Any

from engine.audit.rerun import Requests
from engine.audit.scan import Ev, LedgerScan, iso_us
from gate.normalise import norm_text
from schemas.events import TERMINAL_STATUSES

#: OpenCode tools governed by another tool's permission rule
_PERMISSION_OF_TOOL = {"patch": "edit", "multiedit": "edit", "apply_patch": "edit"}
_SPAWN_TOOLS = frozenset({"ledger_spawn_agent", "ledger_delegate", "ledger_delegate_batch"})
_ALWAYS_ALLOWED = frozenset({"todowrite", "todoread", "invalid"})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def constraints_split(own: list[str], ancestors: list[list[str]]) -> dict[str, list[str]]:
    """Own constraints split into inherited (carried from an ancestor, as the gate normalises them) and
    added; plus the ancestors' constraints this hop dropped (what CON-01 refuses)."""
    above: dict[str, str] = {}
    for constraints in ancestors:
        for text in constraints:
            above.setdefault(norm_text(text), text)
    mine = {norm_text(t) for t in own}
    return {
        "inherited": [t for t in own if norm_text(t) in above],
        "added": [t for t in own if norm_text(t) not in above],
        "missing": [text for key, text in above.items() if key not in mine],
    }


def _coverage(tool: str, permissions: dict[str, Any], spawned: Ev | None) -> dict[str, Any]:
    """Which recorded rule let the tool run: the agent's permissions from its agent.spawned entry."""
    if spawned is None:
        return {
            "rule": None,
            "covered": False,
            "by": "no agent.spawned entry records the agent's permissions",
        }
    if tool in _SPAWN_TOOLS:
        return {
            "rule": "gate",
            "covered": True,
            "by": "ledger MCP tool: the nested delegation is judged by the gate",
        }
    if tool.startswith("ledger_"):
        return {
            "rule": "token",
            "covered": True,
            "by": "ledger MCP tool, bound by its token to the agent's subtree",
        }
    if tool in _ALWAYS_ALLOWED:
        return {"rule": "allow", "covered": True, "by": "bookkeeping tool with no permission rule"}
    perm = _PERMISSION_OF_TOOL.get(tool, tool)
    rule = permissions.get(perm)
    if rule is None:
        return {"rule": None, "covered": False, "by": f"no permission rule for {perm!r} at spawn"}
    return {"rule": rule, "covered": rule == "allow", "by": f"permission {perm}: {rule} at spawn"}


def actions(
    scan: LedgerScan, stream: str, spawned: Ev | None, window: tuple[int, int]
) -> list[dict[str, Any]]:
    """Every tool call and permission decision recorded for the agent, with what covered it."""
    permissions = _dict((spawned.data or {}).get("permissions")) if spawned is not None else {}
    out = []
    for ev in scan.all(stream, "tool.called", "permission.decided"):
        if not window[0] <= ev.at_us < window[1]:
            continue
        item: dict[str, Any] = {
            "kind": "tool" if ev.type == "tool.called" else "permission",
            "seq": ev.seq,
            "hash": ev.hash,
            "recorded_at": iso_us(ev.at_us),
        }
        d = ev.data
        if d is None:
            item.update(name=None, pruned=True, detail="payload pruned")
        elif ev.type == "tool.called":
            item.update(
                name=d["tool"],
                status=d.get("status"),
                detail=_short(d.get("input") or {}),
                error=d.get("error"),
                coverage=_coverage(d["tool"], permissions, spawned),
            )
        else:
            item.update(
                name=d["permission"],
                patterns=d.get("patterns", []),
                reply=d["reply"],
                detail=d["reason"],
                coverage={"rule": "policy", "covered": d["reply"] != "reject", "by": d["reason"]},
            )
        out.append(item)
    return out


def _revocation(ev: Ev | None, stream: str, revoked: bool) -> dict[str, Any] | None:
    if ev is None:
        return (
            {
                "revoked": True,
                "by": None,
                "reason": "the revocation entry is pruned (from the snapshot)",
                "seq": None,
                "hash": None,
                "recorded_at": None,
                "direct": None,
                "via": None,
            }
            if revoked
            else None
        )
    d = ev.data or {}
    return {
        "revoked": True,
        "by": d.get("by"),
        "reason": d.get("reason"),
        "seq": ev.seq,
        "hash": ev.hash,
        "recorded_at": iso_us(ev.at_us),
        "direct": ev.stream == stream,
        "via": ev.stream,
    }


def hop_node(
    scan: LedgerScan, requests: Requests, stream: str, ancestors: list[str], window: tuple[int, int]
) -> dict[str, Any]:
    """The audit's view of one delegation (approved or refused)."""
    requested = scan.first(stream, "delegation.requested")
    decided = scan.first(stream, "gate.decided")
    spawned = scan.first(stream, "agent.spawned")
    terminal = scan.terminal(stream)
    revoked_by = scan.revocations.get(stream)
    raw = requests.raw(stream) or {}
    state = scan.states.get(stream)
    dd = (decided.data or {}) if decided else {}
    sd = (spawned.data or {}) if spawned else {}
    dc = _dict(raw.get("delegation_context"))
    verdict = dd.get("verdict")
    decision = verdict["decision"] if verdict else ("approved" if state is not None else None)
    own = [c for c in dc.get("constraints") or [] if isinstance(c, str)]
    above = [
        [
            c
            for c in _dict(_dict(requests.raw(a)).get("delegation_context")).get("constraints") or []
            if isinstance(c, str)
        ]
        for a in ancestors
    ]
    evidence = {
        name: None if ev is None else ev.evidence()
        for name, ev in (
            ("requested", requested),
            ("decided", decided),
            ("spawned", spawned),
            ("terminal", terminal),
            ("revoked", revoked_by),
        )
    }
    exceeded = [{**(e.data or {}), **e.evidence()} for e in scan.all(stream, "budget.exceeded")]
    pruned_types = sorted({e.type for e in scan.by_stream.get(stream, ()) if e.data is None})
    st = state or {}
    budget = _dict(dc.get("budget"))
    first = scan.by_stream[stream][0] if scan.by_stream.get(stream) else None
    status = st.get("status") or ("refused" if decision == "rejected" else "unknown")
    return {
        "session_id": stream,
        "role": raw.get("role") or dd.get("role") or st.get("role"),
        "principal": dc.get("delegated_to") or st.get("principal") or None,
        "delegator": dc.get("delegator") or st.get("delegator") or None,
        "parent_session_id": scan.parent_of(stream),
        "depth": dd.get("depth", st.get("depth", len(ancestors))),
        "task_id": scan.task_of(stream),
        "in_window": first is not None and window[0] <= first.at_us < window[1],
        "decision": decision,
        "status": status,
        "terminal": status in TERMINAL_STATUSES or status == "refused",
        "end_reason": st.get("end_reason"),
        "instructions": _short(raw.get("instructions"), 300) if raw.get("instructions") else None,
        "capabilities": {
            "delegator_cap": dc.get("delegator_cap"),
            "delegated_cap": dc.get("delegated_cap"),
            "scopes": dc.get("scopes"),
            "phantom_level": dc.get("phantom_level"),
        },
        "constraints": constraints_split(own, above),
        "times": {
            "requested_at": None if first is None else iso_us(first.at_us),
            "delegated_at": dc.get("delegated_at"),
            "evaluated_at": dd.get("evaluated_at"),
            "spawned_at": None if spawned is None else iso_us(spawned.at_us),
            "ended_at": st.get("ended_at"),
            "expires_at": dc.get("expires_at") or sd.get("expires_at"),
            "timeout_seconds": sd.get("timeout_seconds"),
        },
        "budget": {
            "requested": {"max_tokens": budget.get("max_tokens"), "max_cost_usd": budget.get("max_cost_usd")},
            "allocated": {"max_tokens": st.get("max_tokens"), "max_cost_usd": st.get("max_cost_usd")},
            "consumed": {"tokens": st.get("tokens_used", 0), "cost_usd": round(st.get("cost_usd", 0.0), 9)},
            "subtree": {
                "tokens": st.get("subtree_tokens", 0),
                "cost_usd": round(st.get("subtree_cost_usd", 0.0), 9),
            },
            "exceeded": exceeded,
        },
        "verdict": None if verdict is None else {**verdict, "evaluated_at": dd.get("evaluated_at")},
        "evidence": evidence,
        "revocation": _revocation(revoked_by, stream, bool(st.get("revoked"))),
        "outputs": len(scan.all(stream, "output.received")),
        "summary": _short((terminal.data or {}).get("summary"), 300)
        if terminal and terminal.data and terminal.data.get("summary")
        else None,
        "actions": actions(scan, stream, spawned, window),
        "pruned": bool(pruned_types),
        "unavailable": pruned_types,
        "children": [],
    }
