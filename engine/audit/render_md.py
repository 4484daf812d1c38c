"""The Markdown form: header, a Mermaid diagram of the tree, one section per hop, findings."""

from __future__ import annotations

import re
from typing import Any

from engine.audit import labels
from engine.printable import VISIBLE

_CLASSES = {
    "ok": "fill:#e8f5e9,stroke:#2e7d32",
    "refused": "fill:#ffebee,stroke:#c62828",
    "revoked": "fill:#f3e5f5,stroke:#6a1b9a",
    "overrun": "fill:#fff8e1,stroke:#ef6c00",
    "failed": "fill:#fbe9e7,stroke:#bf360c",
    "open": "fill:#fffde7,stroke:#f9a825",
}


#: What Markdown (CommonMark, GitHub's tables) reads as syntax in text that comes from the ledger (a
#: caller's task id or constraints, an agent's tool input): emphasis (`**` in a scope, `__init__` in a
#: path), links and images, code spans, strikethrough, raw HTML and table cells. Each is written
#: escaped, so the rendered report shows that text exactly as it was recorded, and nothing in it is
#: a link, a tag or a style.
_ESCAPES = {
    **VISIBLE,  # control characters shown as escapes (see engine.printable)
    **str.maketrans({c: "\\" + c for c in "\\`*_[]|~"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " "}),
}
#: what may stand in a code span as it is: hashes, ids, ruleset names (anything else is escaped text)
_CODE = re.compile(r"[\w:./@+-]+")


class _Md(str):
    """Markdown written here (any text from the ledger in it escaped already): a cell takes it as it is."""


def _text(value: Any) -> str:
    return str("" if value is None else value).translate(_ESCAPES)


def _code(value: Any) -> _Md:
    """A hash or an id as a code span; any other text escaped (a backtick or `|` would break the span)."""
    text = str(value)
    return _Md(f"`{text}`" if _CODE.fullmatch(text) else _text(text))


def _cell(value: Any) -> str:
    return value if isinstance(value, _Md) else _text(value)


def _mermaid_text(value: str) -> str:
    """Text inside a quoted Mermaid label: entity codes for what would end it or be read as markup."""
    return (
        value.replace("#", "#35;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
        .translate(VISIBLE)
    )


def mermaid(report: dict[str, Any]) -> str:
    """A `graph TD` of the delegation tree; refused, revoked and overrun hops have their own class."""
    authority = (report["task"].get("cap_origin") or {}).get("ultimate_authority") or "authority"
    lines = ["```mermaid", "graph TD", f'  main(["{_mermaid_text(str(authority))} / main agent"])']
    ids: dict[str, str] = {}
    used: set[str] = set()
    for n, (_, hop) in enumerate(labels.walk(report["tree"])):
        node = ids[hop["session_id"]] = f"h{n}"
        label = "<br/>".join(
            _mermaid_text(str(x)) for x in (hop["role"], hop["session_id"][:8], labels.state(hop))
        )
        lines.append(f'  {node}["{label}"]')
        parent = ids.get(hop["parent_session_id"] or "", "main")
        arrow = "-.->|refused|" if hop["decision"] == "rejected" else "-->"
        lines.append(f"  {parent} {arrow} {node}")
        k = labels.kind(hop)
        lines.append(f"  class {node} {k}")
        used.add(k)
    lines += [f"  classDef {k} {_CLASSES[k]}" for k in sorted(used)]
    lines.append("```")
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _hop(depth: int, hop: dict[str, Any]) -> list[str]:
    out = [f"### {'↳ ' * depth}{_text(labels.title(hop))} — {_code(hop['session_id'])}", ""]
    rows = [
        ["state", labels.state(hop)],
        ["depth", hop["depth"]],
        ["parent", hop["parent_session_id"] or "main agent"],
        ["capability", labels.capabilities(hop)],
        ["delegator capability", hop["capabilities"]["delegator_cap"]],
        ["constraints inherited", "; ".join(hop["constraints"]["inherited"]) or "none"],
        ["constraints added", "; ".join(hop["constraints"]["added"]) or "none"],
    ]
    if hop["constraints"]["missing"]:
        rows.append(["constraints MISSING", "; ".join(hop["constraints"]["missing"])])
    t = hop["times"]
    rows += [
        ["requested / decided", f"{t['requested_at']} / evaluated {t['evaluated_at']}"],
        ["delegated at / expires", f"{t['delegated_at']} / {t['expires_at'] or '-'}"],
        ["spawned / ended", f"{t['spawned_at'] or '-'} / {t['ended_at'] or '-'}"],
        ["gate", labels.verdict(hop)],
        ["re-run", labels.rerun(hop)],
        ["budget", labels.budget(hop)],
    ]
    if hop["revocation"]:
        rv = hop["revocation"]
        rows.append(["revoked", f"by {rv['by']}: {rv['reason']} (seq {rv['seq']}, via {rv['via']})"])
    if hop["end_reason"]:
        rows.append(["end reason", hop["end_reason"]])
    if hop["pruned"]:
        rows.append(["pruned", "unavailable: " + ", ".join(hop["unavailable"])])
    out += [*_table(["", ""], rows), ""]
    ev = [
        [name, e["seq"], _code(e["hash"]), e["recorded_at"], "yes" if e["pruned"] else ""]
        for name, e in hop["evidence"].items()
        if e is not None
    ]
    out += ["Evidence:", "", *_table(["entry", "seq", "hash", "recorded at", "pruned"], ev), ""]
    if hop["verdict"] and (hop["verdict"]["violations"] or hop["verdict"]["warnings"]):
        fs = [
            [f["severity"], f["rule"], f["path"], f["message"]]
            for f in hop["verdict"]["violations"] + hop["verdict"]["warnings"]
        ]
        out += ["Gate findings:", "", *_table(["severity", "rule", "path", "message"], fs), ""]
    if hop["actions"]:
        acts = [
            [
                a["seq"],
                a["kind"],
                a["name"],
                a.get("status") or a.get("reply"),
                (a.get("coverage") or {}).get("by", ""),
                a.get("detail"),
            ]
            for a in hop["actions"]
        ]
        out += ["Actions:", "", *_table(["seq", "kind", "name", "outcome", "covered by", "detail"], acts), ""]
    return out


def render_md(env: dict[str, Any]) -> str:
    r = env["report"]
    s, led, task = r["summary"], r["ledger"], r["task"]
    ot, co = task.get("original_task") or {}, task.get("cap_origin") or {}
    cp = led["newest_checkpoint"]
    out = [
        f"# Compliance audit of task {_code(task['task_id'])} — {s['result'].upper()}",
        "",
        f"Report SHA-256: {_code(env['report_sha256'])} (RFC 8785 canonical JSON of the report)",
        "",
    ]
    if labels.issued(env):
        out += [f"Issued: {_text(labels.issued(env))}", ""]
    out += _table(
        ["", ""],
        [
            ["scope", ", ".join(f"{k}={v}" for k, v in r["scope"].items() if v is not None)],
            ["generated at", r["generated_at"]],
            ["asked", f"{ot.get('title')} — by {ot.get('requester')} at {ot.get('requested_at')}"],
            [
                "authority",
                f"{co.get('ultimate_authority')}: {co.get('original_scope')} "
                f"(granted {co.get('granted_at')})",
            ],
            [
                "ledger head",
                _Md(f"#{led['head']['size']} {_code(led['head']['hash'])} ({_text(led['origin'])})"),
            ],
            [
                "verify (recomputed)",
                "ok"
                if led["verify"]["ok"]
                else f"FAILED at seq {led['verify']['first_bad_seq']}: {led['verify']['problem']}",
            ],
            [
                "newest checkpoint",
                "none"
                if cp is None
                else _Md(f"size {cp['size']}, {_text(cp['trigger'])}, head {_code(cp['head'])}"),
            ],
            [
                "current rules",
                _Md(
                    f"{_code(r['rulesets']['current']['ruleset_hash'])} "
                    f"({_text(r['rulesets']['current']['profile'])})"
                ),
            ],
            *[
                ["rules in verdicts", _Md(f"{_code(u['ruleset_hash'])} × {u['decisions']}")]
                for u in r["rulesets"]["in_verdicts"]
            ],
            [
                "summary",
                f"{s['hops']} hop(s): {s['approved']} approved, {s['refused']} refused, "
                f"{s['revoked']} revoked; "
                f"{s['tool_calls']} tool call(s); {s['tokens']:,} tokens, ${s['cost_usd']:g}; "
                f"{s['violations']} violation(s), {s['warnings']} warning(s)",
            ],
        ],
    )
    out += ["", "## Delegation tree", "", mermaid(r), ""]
    for depth, hop in labels.walk(r["tree"]):
        out += _hop(depth, hop)
    out += ["## Refused delegations", ""]
    out += _table(
        ["session", "role", "parent", "seq", "violations"],
        [
            [
                x["session_id"],
                x["role"],
                x["parent_session_id"] or "main agent",
                x["decided_seq"],
                "; ".join(f"{f['rule']}: {f['message']}" for f in x["violations"]),
            ]
            for x in r["refused"]
        ],
    )
    out += ["", "## Findings", ""]
    out += _table(
        ["severity", "code", "session", "seq", "message"],
        [[f["severity"], f["code"], f["session_id"], f["seq"], f["message"]] for f in r["findings"]],
    )
    ret = r["retention"]
    out += [
        "",
        "## Retention",
        "",
        f"Oldest entry: {ret['oldest_entry']}; minimum {ret['minimum_days']:g} days; "
        f"{ret['pruned_payloads']} pruned payload(s); {'ok' if ret['ok'] else '**below the minimum**'}.",
        "",
    ]
    return "\n".join(out) + "\n"
