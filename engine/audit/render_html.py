"""The HTML form: one self-contained file (inline CSS, no script, no external asset); the tree is
drawn as boxes joined by lines, each box opening onto the hop's evidence, actions and re-run."""

from __future__ import annotations

from html import escape
from typing import Any

from engine.audit import labels
from engine.printable import printable

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7fb}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ccd}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:700;margin-left:8px}
.pass{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;background:#fff;margin:6px 0}
td,th{border:1px solid #d5d9e3;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#eef1f7}.kv td:first-child{font-weight:600;white-space:nowrap}
.tree ul{list-style:none;margin:0;padding-left:34px;position:relative}.tree>ul{padding-left:0}
.tree li{position:relative;padding:8px 0 0 0}
.tree ul ul>li::before{content:"";position:absolute;left:-20px;top:0;bottom:0;border-left:2px solid #8c96aa}
.tree ul ul>li:last-child::before{bottom:auto;height:30px}
.tree ul ul>li::after{content:"";position:absolute;left:-20px;top:30px;width:18px;
 border-top:2px solid #8c96aa}
.node{display:inline-block;min-width:380px;max-width:900px;border:2px solid #2e7d32;border-radius:10px;
 background:#fff;padding:6px 12px;box-shadow:0 1px 2px #0002}
.sw{width:12px;height:12px;border-width:2px;border-style:solid;border-radius:3px;vertical-align:middle;
 margin-right:4px}
.legend span{display:inline-block;margin-right:14px}
.node .head{font-weight:700}
.sid{color:#667;font-family:ui-monospace,monospace;font-size:12px}
.node .sid{color:#667;font-weight:400;font-family:ui-monospace,monospace;font-size:12px}
.node .st{float:right;margin-left:12px;font-size:12px;padding:1px 8px;border-radius:8px;color:#fff;
 background:#2e7d32}
.node .line{font-size:12.5px;color:#333}.node details{font-size:12.5px;margin-top:4px}
.root{border-color:#1d3f8f;background:#eaf0ff}.root .st{background:#1d3f8f}
.refused{border-color:#c62828;background:#fff5f5}.refused .st{background:#c62828}
.revoked{border-color:#6a1b9a;background:#faf3fc}.revoked .st{background:#6a1b9a}
.overrun{border-color:#ef6c00;background:#fff8ee}.overrun .st{background:#ef6c00}
.failed{border-color:#bf360c}.failed .st{background:#bf360c}
.open{border-color:#f9a825}.open .st{background:#f9a825}.ok{border-color:#2e7d32}
.violation{color:#c62828;font-weight:700}.warning{color:#a66b00;font-weight:600}.info{color:#2b5aa8}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else printable(value))


def _kv(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{_e((classes or [''] * len(rows))[i])}'>"
        + "".join(f"<td>{_e(c)}</td>" for c in r)
        + "</tr>"
        for i, r in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _node(hop: dict[str, Any]) -> str:
    kind = labels.kind(hop)
    lines = [
        ("capability", labels.capabilities(hop)),
        ("constraints", labels.constraints(hop)),
        ("gate", labels.verdict(hop)),
        ("budget", labels.budget(hop)),
    ]
    if hop["revocation"]:
        rv = hop["revocation"]
        lines.append(("revoked", f"by {rv['by']}: {rv['reason']} (seq {rv['seq']})"))
    body = "".join(f"<div class='line'><b>{_e(k)}:</b> {_e(v)}</div>" for k, v in lines)
    t = hop["times"]
    details = _kv(
        [
            ("principal", hop["principal"]),
            ("delegator", hop["delegator"]),
            ("delegator capability", hop["capabilities"]["delegator_cap"]),
            ("requested", t["requested_at"]),
            ("evaluated at", t["evaluated_at"]),
            ("delegated at", t["delegated_at"]),
            ("expires", t["expires_at"]),
            ("spawned", t["spawned_at"]),
            ("ended", t["ended_at"]),
            ("end reason", hop["end_reason"]),
            ("re-run", labels.rerun(hop)),
            ("unavailable (pruned)", ", ".join(hop["unavailable"]) or "-"),
        ]
    )
    details += _table(
        ["entry", "seq", "hash", "recorded at"],
        [[n, e["seq"], e["hash"], e["recorded_at"]] for n, e in hop["evidence"].items() if e],
    )
    if hop["verdict"] and (hop["verdict"]["violations"] or hop["verdict"]["warnings"]):
        details += _table(
            ["rule", "severity", "path", "message"],
            [
                [f["rule"], f["severity"], f["path"], f["message"]]
                for f in hop["verdict"]["violations"] + hop["verdict"]["warnings"]
            ],
        )
    if hop["actions"]:
        details += _table(
            ["seq", "kind", "name", "outcome", "covered by"],
            [
                [
                    a["seq"],
                    a["kind"],
                    a["name"],
                    a.get("status") or a.get("reply"),
                    (a.get("coverage") or {}).get("by"),
                ]
                for a in hop["actions"]
            ],
        )
    children = "".join(f"<li>{_node(c)}</li>" for c in hop["children"])
    return (
        f"<div class='node {kind}' id='s-{_e(hop['session_id'])}'>"
        f"<span class='st'>{_e(labels.state(hop))}</span>"
        f"<div class='head'>{_e(labels.title(hop))} <span class='sid'>{_e(hop['session_id'][:8])} · depth "
        f"{_e(hop['depth'])} · {len(hop['actions'])} action(s)</span></div>{body}"
        f"<details><summary>evidence, actions, re-run</summary>{details}</details></div>"
        + (f"<ul>{children}</ul>" if children else "")
    )


def render_html(env: dict[str, Any]) -> str:
    r = env["report"]
    s, led, task = r["summary"], r["ledger"], r["task"]
    ot, co = task.get("original_task") or {}, task.get("cap_origin") or {}
    cp = led["newest_checkpoint"]
    header = _kv(
        [
            ("report SHA-256", env["report_sha256"]),
            ("scope", ", ".join(f"{k}={v}" for k, v in r["scope"].items() if v is not None)),
            ("generated at", r["generated_at"]),
            ("issued", labels.issued(env) or "not issued (no --sign)"),
            ("asked", f"{ot.get('title')} — by {ot.get('requester')} at {ot.get('requested_at')}"),
            (
                "authority",
                f"{co.get('ultimate_authority')}: {co.get('original_scope')} "
                f"(granted {co.get('granted_at')})",
            ),
            ("ledger head", f"#{led['head']['size']} {led['head']['hash']} ({led['origin']})"),
            (
                "verify (recomputed)",
                "ok"
                if led["verify"]["ok"]
                else f"FAILED at seq {led['verify']['first_bad_seq']}: {led['verify']['problem']}: "
                f"{led['verify']['message']}",
            ),
            (
                "newest checkpoint",
                "none" if cp is None else f"size {cp['size']} ({cp['trigger']}), head {cp['head']}",
            ),
            (
                "current rules",
                f"{r['rulesets']['current']['ruleset_hash']} ({r['rulesets']['current']['profile']})",
            ),
            *[
                ("rules in verdicts", f"{u['ruleset_hash']} × {u['decisions']}")
                for u in r["rulesets"]["in_verdicts"]
            ],
            (
                "summary",
                f"{s['hops']} hop(s): {s['approved']} approved, {s['refused']} refused, "
                f"{s['revoked']} revoked; "
                f"{s['tool_calls']} tool call(s); {s['tokens']:,} tokens, ${s['cost_usd']:g}",
            ),
        ]
    )
    authority = co.get("ultimate_authority") or "authority"
    roots = "".join(f"<li>{_node(h)}</li>" for h in r["tree"])
    tree = (
        "<div class='tree'><ul><li><div class='node root'><span class='st'>authority</span>"
        "<div class='head'>"
        f"{_e(authority)} → main agent</div><div class='line'>{_e(co.get('original_scope'))}</div></div>"
        f"<ul>{roots}</ul></li></ul></div>"
    )
    legend = (
        "<div class='legend'>"
        + "".join(
            f"<span><span class='sw {k}' style='display:inline-block'></span>{k}</span>"
            for k in ("ok", "refused", "revoked", "overrun", "failed", "open")
        )
        + "</div>"
    )
    refused = _table(
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
    findings = _table(
        ["severity", "code", "session", "seq", "message"],
        [[f["severity"], f["code"], f["session_id"], f["seq"], f["message"]] for f in r["findings"]],
        [f["severity"] for f in r["findings"]],
    )
    ret = r["retention"]
    retention = _kv(
        [
            ("minimum", f"{ret['minimum_days']:g} days"),
            ("oldest entry", ret["oldest_entry"]),
            ("pruned payloads", ret["pruned_payloads"]),
            ("prunes", len(ret["prunes"])),
            ("result", "ok" if ret["ok"] else "BELOW THE MINIMUM"),
        ]
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Audit of task {_e(task['task_id'])}"
        f"</title><style>{_CSS}</style></head><body><h1>Compliance audit of task {_e(task['task_id'])}"
        f"<span class='badge {s['result']}'>{s['result'].upper()}</span></h1>"
        f"<div>{s['violations']} violation(s), {s['warnings']} warning(s), {s['infos']} note(s) · "
        f"{s['hops']} hop(s): {s['approved']} approved, {s['refused']} refused, {s['revoked']} revoked · "
        f"ledger verify {'ok' if led['verify']['ok'] else 'FAILED'} · report SHA-256 "
        f"<span class='sid'>{_e(env['report_sha256'])}</span></div>"
        f"<h2>Delegation tree</h2>{legend}{tree}<h2>Audit findings</h2>{findings}"
        f"<h2>Refused delegations</h2>{refused}<h2>Scope, ledger and rules</h2>{header}"
        f"<h2>Retention</h2>{retention}</body></html>\n"
    )
