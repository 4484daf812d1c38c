"""Short texts shared by the renderers: one line per hop, budget, gate verdict, evidence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def short(value: str | None, n: int = 12) -> str:
    return "" if not value else value.removeprefix("sha256:")[:n]


def walk(tree: list[dict[str, Any]], depth: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every hop of the tree, parents first, with its nesting level in the report."""
    for hop in tree:
        yield depth, hop
        yield from walk(hop["children"], depth + 1)


def state(hop: dict[str, Any]) -> str:
    """`approved · completed`, `REFUSED`, `approved · revoked`..."""
    if hop["decision"] == "rejected":
        return "REFUSED"
    text = f"{hop['decision'] or 'unknown'} · {hop['status']}"
    return text + (" · REVOKED" if hop["revocation"] and hop["status"] != "revoked" else "")


def kind(hop: dict[str, Any]) -> str:
    """CSS/diagram class of a hop: refused, revoked, overrun, failed, open, ok."""
    if hop["decision"] == "rejected":
        return "refused"
    if hop["revocation"]:
        return "revoked"
    if hop["budget"]["exceeded"]:
        return "overrun"
    if hop["status"] in ("failed", "interrupted"):
        return "failed"
    if not hop["terminal"]:
        return "open"
    return "ok"


def title(hop: dict[str, Any]) -> str:
    principal = hop["principal"]
    who = hop["role"] or "?"
    if principal and principal != who:
        who += f" ({principal})"
    return f"{who} ← {hop['delegator'] or '?'}"


def _money(value: Any) -> str:
    return "-" if value is None else f"${value:g}"


def _tokens(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def budget(hop: dict[str, Any]) -> str:
    b = hop["budget"]
    alloc, own, sub = b["allocated"], b["consumed"], b["subtree"]
    text = (
        f"allocated {_tokens(alloc['max_tokens'])} tok / {_money(alloc['max_cost_usd'])}; "
        f"used {_tokens(own['tokens'])} tok / {_money(own['cost_usd'])}; "
        f"subtree {_tokens(sub['tokens'])} tok / {_money(sub['cost_usd'])}"
    )
    for x in b["exceeded"]:
        if x.get("used") is None:  # a pruned budget.exceeded entry: only its header is left
            text += f"; EXCEEDED (entry seq {x['seq']}, payload pruned)"
        else:
            text += f"; EXCEEDED {x.get('limit')} {x['used']:g} > {x['allowed']:g} (seq {x['seq']})"
    return text


def verdict(hop: dict[str, Any]) -> str:
    v = hop["verdict"]
    if v is None:
        return "gate verdict unavailable (pruned)"
    vio = ", ".join(f["rule"] for f in v.get("violations", []))
    warn = ", ".join(f["rule"] for f in v.get("warnings", []))
    text = f"{v['decision']} under {short(v['ruleset_hash'])} ({v['profile']})"
    if vio:
        text += f"; violations {vio}"
    if warn:
        text += f"; warnings {warn}"
    return text


def rerun(hop: dict[str, Any]) -> str:
    r = hop["rerun"]
    if r is None:
        return "not re-run (outside the window)"
    parts = [r["status"]]
    for name, key in (("recorded rules", "recorded_rules"), ("current rules", "current_rules")):
        o = r.get(key)
        if o and o.get("available"):
            parts.append(f"{name}: {o['decision']}")
        elif o:
            parts.append(f"{name}: unavailable")
    return "; ".join(parts) + ("" if not r["notes"] else f" ({'; '.join(r['notes'])})")


def constraints(hop: dict[str, Any]) -> str:
    c = hop["constraints"]
    text = f"inherited: {'; '.join(c['inherited']) or 'none'} | added: {'; '.join(c['added']) or 'none'}"
    if c["missing"]:
        text += f" | MISSING: {'; '.join(c['missing'])}"
    return text


def capabilities(hop: dict[str, Any]) -> str:
    cap = hop["capabilities"]
    text = f"{cap['delegated_cap'] or '?'}"
    if cap["scopes"]:
        text += f" [scopes: {', '.join(cap['scopes'])}]"
    return text


def evidence(hop: dict[str, Any]) -> str:
    parts = []
    for name, ev in hop["evidence"].items():
        if ev is not None:
            parts.append(
                f"{name} #{ev['seq']} {short(ev['hash'], 10)}" + (" (pruned)" if ev["pruned"] else "")
            )
    return ", ".join(parts)


def action(a: dict[str, Any]) -> str:
    if a["kind"] == "tool":
        cov = a.get("coverage") or {}
        return f"#{a['seq']} tool {a['name']} {a.get('status') or ''} — {cov.get('by', '')}" + (
            " [NOT COVERED]" if not cov.get("covered", True) else ""
        )
    return f"#{a['seq']} permission {a['name']} → {a.get('reply')} ({a.get('detail')})"


def issued(env: dict[str, Any]) -> str | None:
    """Where a signed report was issued (audit.issued seq and checkpoint), when it was."""
    x = env.get("issued")
    if not x:
        return None
    return (
        f"audit.issued at seq {x['seq']} ({short(x['hash'], 16)}); checkpoint size {x['checkpoint']['size']} "
        f"signed with audit_report_sha256 {x['report_sha256']}"
    )
