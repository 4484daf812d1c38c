"""The terminal form: a header, the delegation tree (rich), refused delegations and findings."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from engine.audit import labels
from engine.printable import styled

_STYLE = {
    "refused": "bold red",
    "revoked": "magenta",
    "overrun": "bold yellow",
    "failed": "red",
    "open": "yellow",
    "ok": "green",
}
_SEVERITY = {"violation": "bold red", "warning": "yellow", "info": "cyan"}


def _header(env: dict[str, Any]) -> list[RenderableType]:
    r = env["report"]
    s, led, task = r["summary"], r["ledger"], r["task"]
    ok = s["result"] == "pass"
    lines: list[RenderableType] = [
        styled(
            (f"Compliance audit of task {task['task_id']}", "bold"),
            "  ",
            (s["result"].upper(), "bold green" if ok else "bold red"),
            f" ({s['violations']} violation(s), {s['warnings']} warning(s))",
        )
    ]
    ot, co = task.get("original_task") or {}, task.get("cap_origin") or {}
    scope = r["scope"]
    rows = [
        ("report sha256", env["report_sha256"]),
        ("scope", ", ".join(f"{k}={v}" for k, v in scope.items() if v is not None)),
        ("generated at", r["generated_at"]),
        ("asked", f"{ot.get('title', '?')} — by {ot.get('requester', '?')} at {ot.get('requested_at', '?')}"),
        (
            "authority",
            f"{co.get('ultimate_authority', '?')}: {co.get('original_scope', '?')} "
            f"(granted {co.get('granted_at', '?')}, {co.get('grant_context', '?')})",
        ),
        ("ledger", f"{led['origin']} head #{led['head']['size']} {labels.short(led['head']['hash'], 16)}"),
        (
            "verify",
            "ok (recomputed): "
            f"{led['verify']['entries']} entries, {led['verify']['checkpoints_checked']} "
            "checkpoint(s)"
            if led["verify"]["ok"]
            else f"FAILED at seq {led['verify']['first_bad_seq']}: {led['verify']['problem']}",
        ),
    ]
    if labels.issued(env):
        rows.append(("issued", labels.issued(env)))
    cp = led["newest_checkpoint"]
    rows.append(
        (
            "checkpoint",
            "none"
            if cp is None
            else f"size {cp['size']} ({cp['trigger'] or '?'}, {cp['recorded_at'] or '?'}), "
            f"head {labels.short(cp['head'], 16)}",
        )
    )
    rules = r["rulesets"]
    rows.append(
        (
            "rules now",
            f"{rules['current']['ruleset_hash']} ({rules['current']['profile']}, "
            f"{rules['current']['source'] or 'built-in/settings'})",
        )
    )
    for used in rules["in_verdicts"]:
        rows.append(("rules used", f"{used['ruleset_hash']} by {used['decisions']} decision(s)"))
    for loaded in rules["loaded"]:
        rows.append(
            (
                "rules loaded",
                f"{loaded['ruleset_hash']} at seq {loaded['seq']} "
                f"({'rebuilt' if loaded['rebuilt'] else 'NOT rebuilt: ' + str(loaded['problem'])})",
            )
        )
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, styled(v))
    lines.append(t)
    return lines


def _tree(r: dict[str, Any]) -> Tree:
    authority = (r["task"].get("cap_origin") or {}).get("ultimate_authority", "?")
    root = Tree(styled(("delegation tree", "bold"), f" (authority: {authority})"))

    def add(node: Tree, hop: dict[str, Any]) -> None:
        style = _STYLE[labels.kind(hop)]
        head = styled(
            (labels.title(hop), style),
            " ",
            (hop["session_id"][:8], "dim"),
            " ",
            (labels.state(hop), style),
            f" depth {hop['depth']}",
        )
        if not hop["in_window"]:
            head.append(" (outside the window: context)", "dim")
        branch = node.add(head)
        details = [
            ("cap", labels.capabilities(hop)),
            ("constraints", labels.constraints(hop)),
            ("gate", labels.verdict(hop)),
            ("re-run", labels.rerun(hop)),
            ("budget", labels.budget(hop)),
            (
                "times",
                f"requested {hop['times']['requested_at']}, ended {hop['times']['ended_at'] or '-'}, "
                f"expires {hop['times']['expires_at'] or '-'}",
            ),
            ("evidence", labels.evidence(hop)),
        ]
        if hop["revocation"]:
            rv = hop["revocation"]
            details.append(
                (
                    "revoked",
                    f"by {rv['by']} ({rv['reason']}) at seq {rv['seq']}"
                    + ("" if rv["direct"] else f", with the subtree of {rv['via']}"),
                )
            )
        if hop["end_reason"]:
            details.append(("ended", hop["end_reason"]))
        if hop["pruned"]:
            details.append(("pruned", "unavailable: " + ", ".join(hop["unavailable"])))
        for k, v in details:
            branch.add(styled((f"{k}:", "dim"), f" {v}"))
        if hop["actions"]:
            acts = branch.add(styled((f"actions ({len(hop['actions'])}):", "dim")))
            for a in hop["actions"]:
                acts.add(styled(labels.action(a)))
        for child in hop["children"]:
            add(branch, child)

    for hop in r["tree"]:
        add(root, hop)
    return root


def renderables(env: dict[str, Any]) -> Group:
    """Everything the terminal shows, as one rich renderable."""
    r = env["report"]
    parts: list[RenderableType] = [*_header(env), Text(""), _tree(r)]
    if r["refused"]:
        t = Table(title="refused delegations", header_style="bold", expand=False)
        for c in ("session", "role", "parent", "seq", "violations"):
            t.add_column(c, overflow="fold")
        for x in r["refused"]:
            t.add_row(
                styled(x["session_id"][:8]),
                styled(x["role"]),
                styled(x["parent_session_id"][:8] if x["parent_session_id"] else "main agent"),
                str("" if x["decided_seq"] is None else x["decided_seq"]),
                styled("; ".join(f"{f['rule']} {f['path']}: {f['message']}" for f in x["violations"])),
            )
        parts.append(t)
    t = Table(title="audit findings", header_style="bold")
    for c in ("severity", "code", "session", "seq", "message"):
        t.add_column(c, overflow="fold")
    for f in r["findings"]:
        t.add_row(
            Text(f["severity"], style=_SEVERITY[f["severity"]]),
            styled(f["code"]),
            styled((f["session_id"] or "")[:8]),
            "" if f["seq"] is None else str(f["seq"]),
            styled(f["message"]),
        )
    parts.append(t)
    ret = r["retention"]
    oldest = ret["oldest_entry"] or {}
    parts.append(
        styled(
            f"retention: oldest entry #{oldest.get('seq')} {oldest.get('recorded_at')} "
            f"({oldest.get('age_days')} d; minimum {ret['minimum_days']:g} d), "
            f"{ret['pruned_payloads']} pruned payload(s), {len(ret['prunes'])} prune(s): "
            f"{'ok' if ret['ok'] else 'BELOW MINIMUM'}"
        )
    )
    return Group(*parts)


def render_text(env: dict[str, Any], *, width: int = 160) -> str:
    buf = io.StringIO()
    # wrapped at `width`, never cropped (a soft-wrapping console crops a tree's long branches)
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderables(env))
    return buf.getvalue()
