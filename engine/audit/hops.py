"""One node of the audited delegation tree: who delegated what to whom, under which constraints,
what the gate decided, what the agent did and spent, and the entries that prove each of it."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from engine.audit.canonical import number
from engine.audit.rerun import Requests
from engine.audit.scan import TERMINAL_TYPES, Ev, LedgerScan, iso_us
from engine.permissions import pattern_action
from engine.write_scope import project_relative, within, write_scopes
from gate.normalise import norm_text
from schemas.events import TERMINAL_STATUSES

#: OpenCode tools governed by another tool's permission rule
_PERMISSION_OF_TOOL = {"patch": "edit", "multiedit": "edit", "apply_patch": "edit"}
_SPAWN_TOOLS = frozenset({"ledger_spawn_agent", "ledger_delegate", "ledger_delegate_batch"})
_ALWAYS_ALLOWED = frozenset({"todowrite", "todoread", "invalid"})
#: where a tool's input names the file or directory it works on
_PATH_KEYS = ("filePath", "path")
_ACTION_KINDS = {"tool.called": "tool", "permission.decided": "permission"}
_GATE_COVERAGE = {
    "by": "ledger MCP tool: the nested delegation is judged by the gate",
    "covered": True,
    "rule": "gate",
}
_TOKEN_COVERAGE = {
    "by": "ledger MCP tool, bound by its token to the agent's subtree",
    "covered": True,
    "rule": "token",
}
_BOOKKEEPING_COVERAGE = {"by": "bookkeeping tool with no permission rule", "covered": True, "rule": "allow"}


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


def _coverage(
    tool: str, tool_input: Any, permissions: dict[str, Any], spawned: Ev | None, scopes: Any = None
) -> dict[str, Any]:
    """Which recorded rule let the tool run: the agent's permissions from its agent.spawned entry (and,
    for a file the rule left to the policy to judge, the delegation's write `scopes`)."""
    if spawned is None:
        return {
            "by": "no agent.spawned entry records the agent's permissions",
            "covered": False,
            "rule": None,
        }
    if tool in _SPAWN_TOOLS:
        return dict(_GATE_COVERAGE)
    if tool.startswith("ledger_"):
        return dict(_TOKEN_COVERAGE)
    if tool in _ALWAYS_ALLOWED:
        return dict(_BOOKKEEPING_COVERAGE)
    perm = _PERMISSION_OF_TOOL.get(tool, tool)
    rule = permissions.get(perm)
    if rule is None:
        return {"by": f"no permission rule for {perm!r} at spawn", "covered": False, "rule": None}
    if isinstance(rule, dict):  # {pattern: action}: judged on the path the tool was given
        target = next((v for k in _PATH_KEYS if isinstance(v := _dict(tool_input).get(k), str)), "*")
        project = (spawned.data or {}).get("project_directory")
        frozen = _frozen(rule, project, scopes)
        # agents share their rules: each (rule, path, project, scopes) is judged once (a pure function)
        by, covered = (
            _judge(perm, target, rule, project, scopes) if frozen is None else _judged(perm, target, *frozen)
        )
        return {"by": by, "covered": covered, "rule": rule}
    return {"by": f"permission {perm}: {rule} at spawn", "covered": rule == "allow", "rule": rule}


def _frozen(
    rule: dict[str, Any], project: Any, scopes: Any
) -> tuple[tuple[tuple[str, str], ...], str | None, tuple[str, ...] | None] | None:
    """The judgement's inputs as a cache key, when they are all text (else None: judged uncached, as a
    key would take `1` for `True`)."""
    if not set(map(type, rule.values())) <= _TEXT or not (project is None or type(project) is str):
        return None
    if type(scopes) is not list:
        return tuple(rule.items()), project, None
    if not set(map(type, scopes)) <= _TEXT:
        return None
    return tuple(rule.items()), project, tuple(scopes)


_TEXT = frozenset({str})


@lru_cache(maxsize=4096)
def _judged(
    perm: str,
    target: str,
    rule: tuple[tuple[str, str], ...],
    project: str | None,
    scopes: tuple[str, ...] | None,
) -> tuple[str, bool]:
    return _judge(perm, target, dict(rule), project, None if scopes is None else list(scopes))


def _judge(perm: str, target: str, rule: dict[str, Any], project: Any, scopes: Any) -> tuple[str, bool]:
    """(how, covered) for a tool's `target` under a {pattern: action} `rule`."""
    action = pattern_action(rule, target)
    if action == "ask":  # judged by the policy on the write scopes' paths (engine.write_scope)
        return _asked(perm, target, project, scopes)
    return f"permission {perm}: {action} for {target} by its patterns at spawn", action == "allow"


def _asked(perm: str, target: str, project: Any, scopes: Any) -> tuple[str, bool]:
    """Coverage of a file the agent's rule asked about: inside one of the delegation's write scopes, as
    the policy answered OpenCode (its answer is the permission decision recorded before the call)."""
    limited = write_scopes(scopes if isinstance(scopes, list) else None)
    rel = project_relative(target, project) if isinstance(project, str) and os.path.isabs(target) else None
    scope = within(limited, rel) if limited and rel is not None else None
    return (
        f"permission {perm}: asked for {target}; "
        + (f"inside the write scope {scope}" if scope else "outside the delegation's write scopes"),
        scope is not None,
    )


def actions(
    scan: LedgerScan,
    stream: str,
    spawned: Ev | None,
    window: tuple[int, int],
    scopes: Any = None,
) -> list[dict[str, Any]]:
    """Every tool call and permission decision recorded for the agent, with what covered it.
    (Objects are written with their keys in order: the report's encoder then has none to sort.)"""
    permissions = _dict((spawned.data or {}).get("permissions")) if spawned is not None else {}
    out = []
    lo, hi = window
    for ev in scan.by_stream.get(stream, ()):
        kind = _ACTION_KINDS.get(ev.type)
        if kind is None or not lo <= ev.at_us < hi:
            continue
        d = ev.data
        if d is None:
            item: dict[str, Any] = {
                "detail": "payload pruned",
                "hash": ev.hash_bytes.hex(),
                "kind": kind,
                "name": None,
                "pruned": True,
                "recorded_at": scan.at(ev),
                "seq": ev.seq,
            }
        elif kind == "tool":
            tool_input = d.get("input")
            item = {
                "coverage": _coverage(d["tool"], tool_input, permissions, spawned, scopes),
                "detail": _short(tool_input or {}),
                "error": d.get("error"),
                "hash": ev.hash_bytes.hex(),
                "kind": kind,
                "name": d["tool"],
                "recorded_at": scan.at(ev),
                "seq": ev.seq,
                "status": d.get("status"),
            }
        else:
            item = {
                "coverage": {"by": d["reason"], "covered": d["reply"] != "reject", "rule": "policy"},
                "detail": d["reason"],
                "hash": ev.hash_bytes.hex(),
                "kind": kind,
                "name": d["permission"],
                "patterns": d.get("patterns", []),
                "recorded_at": scan.at(ev),
                "reply": d["reply"],
                "seq": ev.seq,
            }
        out.append(item)
    return out


def _revocation(ev: Ev | None, stream: str, revoked: bool) -> dict[str, Any] | None:
    if ev is None:
        return (
            {
                "by": None,
                "direct": None,
                "hash": None,
                "reason": "the revocation entry is pruned (from the snapshot)",
                "recorded_at": None,
                "revoked": True,
                "seq": None,
                "via": None,
            }
            if revoked
            else None
        )
    d = ev.data or {}
    return {
        "by": d.get("by"),
        "direct": ev.stream == stream,
        "hash": ev.hash,
        "reason": d.get("reason"),
        "recorded_at": iso_us(ev.at_us),
        "revoked": True,
        "seq": ev.seq,
        "via": ev.stream,
    }


def _sorted(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in sorted(d)}


def _evidence(ev: Ev | None, texts: dict[int, str]) -> dict[str, Any] | None:
    return None if ev is None else ev.evidence(texts)


def hop_node(
    scan: LedgerScan, requests: Requests, stream: str, ancestors: list[str], window: tuple[int, int]
) -> dict[str, Any]:
    """The audit's view of one delegation (approved or refused). Objects are written with their keys
    in order (`rerun` is filled in later, in place): the report's encoder then has none to sort."""
    events = scan.by_stream.get(stream, ())
    firsts, texts = scan.firsts, scan.texts
    requested = firsts.get((stream, "delegation.requested"))
    decided = firsts.get((stream, "gate.decided"))
    spawned = firsts.get((stream, "agent.spawned"))
    terminal = None
    exceeded = []
    outputs = 0
    pruned_types: set[str] = set()
    for e in events:
        t = e.type
        if e.data is None:
            pruned_types.add(t)
        if t == "output.received":
            outputs += 1
        elif t == "budget.exceeded":
            exceeded.append(_sorted({**(e.data or {}), **e.evidence(texts)}))
        elif terminal is None and t in TERMINAL_TYPES:
            terminal = e
    revoked_by = scan.revocations.get(stream)
    raw = requests.raw(stream) or {}
    st = scan.states.get(stream)
    dd = (decided.data or {}) if decided else {}
    sd = (spawned.data or {}) if spawned else {}
    dc = _dict(raw.get("delegation_context"))
    verdict = dd.get("verdict")
    decision = verdict["decision"] if verdict else ("approved" if st is not None else None)
    own = [c for c in dc.get("constraints") or [] if isinstance(c, str)]
    above = [
        [
            c
            for c in _dict(_dict(requests.raw(a)).get("delegation_context")).get("constraints") or []
            if isinstance(c, str)
        ]
        for a in ancestors
    ]
    st = st or {}
    budget = _dict(dc.get("budget"))
    first = events[0] if events else None
    status = st.get("status") or ("refused" if decision == "rejected" else "unknown")
    split = constraints_split(own, above)
    return {
        "actions": actions(scan, stream, spawned, window, dc.get("scopes")),
        "budget": {
            "allocated": {"max_cost_usd": st.get("max_cost_usd"), "max_tokens": st.get("max_tokens")},
            "consumed": {
                "cost_usd": number(round(st.get("cost_usd", 0.0), 9)),
                "tokens": st.get("tokens_used", 0),
            },
            "exceeded": exceeded,
            "requested": {"max_cost_usd": budget.get("max_cost_usd"), "max_tokens": budget.get("max_tokens")},
            "subtree": {
                "cost_usd": number(round(st.get("subtree_cost_usd", 0.0), 9)),
                "tokens": st.get("subtree_tokens", 0),
            },
        },
        "capabilities": {
            "delegated_cap": dc.get("delegated_cap"),
            "delegator_cap": dc.get("delegator_cap"),
            "phantom_level": dc.get("phantom_level"),
            "scopes": dc.get("scopes"),
        },
        "children": [],
        "constraints": {
            "added": split["added"],
            "inherited": split["inherited"],
            "missing": split["missing"],
        },
        "decision": decision,
        "delegator": dc.get("delegator") or st.get("delegator") or None,
        "depth": dd.get("depth", st.get("depth", len(ancestors))),
        "end_reason": st.get("end_reason"),
        "evidence": {
            "decided": _evidence(decided, texts),
            "requested": _evidence(requested, texts),
            "revoked": _evidence(revoked_by, texts),
            "spawned": _evidence(spawned, texts),
            "terminal": _evidence(terminal, texts),
        },
        "in_window": first is not None and window[0] <= first.at_us < window[1],
        "instructions": _short(raw.get("instructions"), 300) if raw.get("instructions") else None,
        "outputs": outputs,
        "parent_session_id": scan.parent_of(stream),
        "principal": dc.get("delegated_to") or st.get("principal") or None,
        "pruned": bool(pruned_types),
        "rerun": None,
        "revocation": _revocation(revoked_by, stream, bool(st.get("revoked"))),
        "role": raw.get("role") or dd.get("role") or st.get("role"),
        "session_id": stream,
        "status": status,
        "summary": _short((terminal.data or {}).get("summary"), 300)
        if terminal and terminal.data and terminal.data.get("summary")
        else None,
        "task_id": scan.task_of(stream),
        "terminal": status in TERMINAL_STATUSES or status == "refused",
        "times": {
            "delegated_at": dc.get("delegated_at"),
            "ended_at": st.get("ended_at"),
            "evaluated_at": dd.get("evaluated_at"),
            "expires_at": dc.get("expires_at") or sd.get("expires_at"),
            "requested_at": None if first is None else scan.at(first),
            "spawned_at": None if spawned is None else scan.at(spawned),
            "timeout_seconds": sd.get("timeout_seconds"),
        },
        "unavailable": sorted(pruned_types),
        "verdict": None if verdict is None else _sorted({**verdict, "evaluated_at": dd.get("evaluated_at")}),
    }
