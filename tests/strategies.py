"""Hypothesis strategies shared by the test suite: JSON values, event payloads, session lifecycles.

Everything here builds *real* values: event models from `schemas.events`, JSON values that RFC 8785
can represent, and lifecycles of delegated sessions shaped like what the engine records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.events import (
    AgentCompleted,
    AgentFailed,
    AgentSpawned,
    AgentStopped,
    BudgetExceeded,
    DelegationRequested,
    DelegationRevoked,
    Finding,
    GateDecided,
    MessageSent,
    OperatorNote,
    OutputReceived,
    PermissionDecided,
    SessionAdopted,
    SessionInterrupted,
    Tokens,
    ToolCalled,
    Verdict,
)

MAX_SAFE_INT = 2**53 - 1

# -- JSON values ---------------------------------------------------------------------------------

#: Characters JSON text can carry (no lone surrogates), biased towards the ranges where JCS key
#: order (UTF-16 code units) differs from code point order: U+E000..U+FFFF and the astral planes.
json_chars = st.one_of(
    st.characters(codec="utf-8"),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF, codec="utf-8"),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8"),
    st.characters(max_codepoint=0x7F),
    st.sampled_from('"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029'),
)
json_text = st.text(json_chars, max_size=12)

safe_ints = st.one_of(
    st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
    st.sampled_from([0, 1, -1, MAX_SAFE_INT, -MAX_SAFE_INT, 10**15, 10**15 - 1, 2**31, -(2**31)]),
)

#: Floats JSON can carry, with the awkward ones made likely: integral floats, the ECMAScript
#: switch-over points between fixed and exponent notation, subnormals and the extremes.
json_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**60), 2**60).map(float),
    st.builds(lambda m, e: m * 10.0**e, st.integers(-999, 999), st.integers(-30, 30)),
    st.sampled_from(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e21,
            1e20,
            123456789012345680000.0,
            1e-6,
            1e-7,
            0.000001,
            9.999999e-7,
            5e-324,
            2.2250738585072014e-308,
            1.7976931348623157e308,
            -1.7976931348623157e308,
            2.0**53,
            2.0**53 + 2,
            4.35,
            0.1 + 0.2,
            1e16,
            1.5e300,
            3.14159e-250,
        ]
    ),
)

json_scalars = st.one_of(st.none(), st.booleans(), safe_ints, json_floats, json_text)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(json_text, children, max_size=5),
    ),
    max_leaves=25,
)

json_objects = st.dictionaries(json_text, json_values, max_size=6)

# -- event payloads ------------------------------------------------------------------------------

#: Non-empty, non-blank free text as agents and operators write it (any Unicode, no lone surrogates).
free_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(lambda s: bool(s.strip()))
ident = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
#: Stream names: identifiers, or any non-empty Unicode text.
stream_names = st.one_of(ident.map(lambda s: f"sess-{s}"), free_text)

costs = st.one_of(
    st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 0.1, 0.25, 1.0, 2.5, 0.30000000000000004]),
)
tokens = st.builds(
    Tokens,
    input=st.integers(0, 200_000),
    output=st.integers(0, 50_000),
    reasoning=st.integers(0, 10_000),
    cache_read=st.integers(0, 10_000),
    cache_write=st.integers(0, 10_000),
)
findings = st.builds(
    Finding,
    rule=st.sampled_from(["SCH-01", "RSP-02", "SCP-01", "BUD-01"]),
    severity=st.sampled_from(["error", "warning"]),
    hop=st.integers(0, 5),
    path=st.sampled_from(["delegation_context.delegated_to", "cap_origin.scopes[0]", "budget"]),
    message=free_text,
    expected=json_scalars,
    actual=json_scalars,
)
verdicts = st.builds(
    Verdict,
    decision=st.sampled_from(["approved", "rejected"]),
    profile=st.sampled_from(["strict", "standard"]),
    ruleset_hash=st.text("0123456789abcdef", min_size=64, max_size=64),
    ledger_head=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    violations=st.lists(findings, max_size=2),
    warnings=st.lists(findings, max_size=2),
)


def _spawned(
    session_id: str, parent: str | None = None, root: str | None = None, depth: int = 0, **extra: Any
) -> AgentSpawned:
    return AgentSpawned(
        session_id=session_id,
        task_id=f"task-{root or session_id}",
        role="coder",
        parent_session_id=parent,
        root_session_id=root or session_id,
        depth=depth,
        principal=f"agent:{session_id}",
        delegator=f"agent:{parent}" if parent else "operator",
        model="scripted/model",
        **extra,
    )


#: One event of any recorded type, for any session (it may refer to sessions that do not exist).
events = st.one_of(
    st.builds(
        OperatorNote, text=free_text, by=ident, kind=st.sampled_from(["note", "oversight", "incident"])
    ),
    st.builds(
        OutputReceived,
        session_id=ident,
        text=st.text(st.characters(codec="utf-8"), max_size=200),
        tokens=tokens,
        cost_usd=costs,
        message_id=st.none() | ident,
    ),
    st.builds(
        ToolCalled,
        session_id=ident,
        tool=st.sampled_from(["bash", "read", "edit", "webfetch"]),
        call_id=st.none() | ident,
        input=json_objects,
        output=st.none() | free_text,
    ),
    st.builds(
        GateDecided,
        verdict=verdicts,
        task_id=st.none() | ident,
        role=st.none() | ident,
        parent_session_id=st.none() | ident,
        depth=st.integers(0, 6),
    ),
    st.builds(
        DelegationRequested,
        request=json_objects,
        via=st.sampled_from(["mcp", "cli", "api"]),
        caller=st.none() | ident,
    ),
    st.builds(
        _spawned,
        ident,
        st.none() | ident,
        max_cost_usd=st.none() | costs,
        max_tokens=st.none() | st.integers(1, MAX_SAFE_INT),
        pid=st.none() | st.integers(1, 2**22),
    ),
    st.builds(MessageSent, session_id=ident, text=free_text),
    st.builds(
        PermissionDecided,
        session_id=ident,
        permission=st.sampled_from(["edit", "bash"]),
        patterns=st.lists(free_text, max_size=2),
        reply=st.sampled_from(["once", "always", "reject"]),
        reason=free_text,
    ),
    st.builds(AgentCompleted, session_id=ident, summary=st.none() | free_text),
    st.builds(AgentStopped, session_id=ident, reason=free_text, by=st.none() | ident),
    st.builds(
        AgentFailed,
        session_id=ident,
        error=free_text,
        kind=st.sampled_from(["error", "timeout", "budget", "expired", "crash"]),
    ),
    st.builds(
        DelegationRevoked, session_id=ident, by=ident, reason=free_text, subtree=st.lists(ident, max_size=3)
    ),
    st.builds(
        BudgetExceeded,
        session_id=ident,
        limit=st.sampled_from(["tokens", "cost_usd", "time"]),
        allowed=costs,
        used=costs,
        charged_to=ident,
    ),
)

#: (stream, event) pairs.
stream_events = st.tuples(stream_names, events)

# -- session lifecycles --------------------------------------------------------------------------

TERMINAL_EVENTS = ("completed", "stopped", "failed", "interrupted")


@dataclass
class Lifecycle:
    """A generated run of delegations: what to append, in order, and what the outcome must be."""

    steps: list[tuple[str, BaseModel]] = field(default_factory=list)
    parents: dict[str, str | None] = field(default_factory=dict)
    spawned: list[str] = field(default_factory=list)
    #: sessions ended by a terminal event or a revocation (the ones prune may take)
    terminal: set[str] = field(default_factory=set)
    #: streams that belong to no session (refused requests, notes): prunable once old
    sessionless: set[str] = field(default_factory=set)

    @property
    def running(self) -> set[str]:
        return set(self.spawned) - self.terminal

    def descendants(self, sid: str) -> list[str]:
        out: list[str] = []
        frontier = [sid]
        while frontier:
            cur = frontier.pop()
            kids = [s for s in self.spawned if self.parents.get(s) == cur]
            out.extend(kids)
            frontier.extend(kids)
        return out


_OPS = (
    "output",
    "output",
    "tool",
    "message",
    "permission",
    "end",
    "revoke",
    "budget",
    "note",
    "refused",
    "adopt",
)


@st.composite
def lifecycles(draw: st.DrawFn, max_sessions: int = 6, max_ops: int = 24, text_size: int = 120) -> Lifecycle:
    """Spawn a tree of sessions (optionally gated first), then interleave outputs with token and cost
    counts, tool calls, messages, permission decisions, budget overruns, adoptions by another engine,
    terminal events (completed, stopped, failed, interrupted), revocations of whole subtrees, operator
    notes and refused requests."""
    n = draw(st.integers(1, max_sessions))
    tag = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=3))
    ids = [f"s-{tag}-{i}" for i in range(n)]
    parent_ix = [None] + [draw(st.none() | st.integers(0, i - 1)) for i in range(1, n)]
    life = Lifecycle(parents={ids[i]: None if p is None else ids[p] for i, p in enumerate(parent_ix)})
    depth = {}
    root = {}

    def spawn(i: int) -> None:
        sid = ids[i]
        if sid in life.spawned:
            return
        p = parent_ix[i]
        if p is not None:
            spawn(p)
        parent = None if p is None else ids[p]
        depth[sid] = 0 if parent is None else depth[parent] + 1
        root[sid] = sid if parent is None else root[parent]
        if draw(st.booleans()):
            verdict = Verdict(decision="approved", profile="standard", ruleset_hash="0" * 64)
            life.steps.append(
                (
                    sid,
                    GateDecided(
                        verdict=verdict,
                        task_id=f"task-{root[sid]}",
                        role="coder",
                        parent_session_id=parent,
                        depth=depth[sid],
                    ),
                )
            )
        life.steps.append(
            (
                sid,
                _spawned(
                    sid,
                    parent,
                    root[sid],
                    depth[sid],
                    max_cost_usd=draw(st.none() | costs),
                    max_tokens=draw(st.none() | st.integers(1, 10**9)),
                ),
            )
        )
        life.spawned.append(sid)

    texts = st.text(st.characters(codec="utf-8"), max_size=text_size)
    ops = draw(st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, n - 1)), max_size=max_ops))
    for k, (op, i) in enumerate(ops):
        sid = ids[i]
        if op == "note":
            life.steps.append((f"notes-{tag}", OperatorNote(text=draw(free_text), by="ops")))
            life.sessionless.add(f"notes-{tag}")
            continue
        if op == "refused":
            stream = f"req-{tag}-{k}"
            verdict = Verdict(
                decision="rejected",
                profile="strict",
                ruleset_hash="0" * 64,
                violations=[Finding(rule="RSP-02", severity="error", hop=0, path="x", message="no")],
            )
            life.steps.append((stream, GateDecided(verdict=verdict, task_id=f"task-{tag}", role="coder")))
            life.sessionless.add(stream)
            continue
        spawn(i)
        if op == "output":
            event: BaseModel = OutputReceived(
                session_id=sid, text=draw(texts), tokens=draw(tokens), cost_usd=draw(costs)
            )
        elif op == "tool":
            event = ToolCalled(session_id=sid, tool="bash", input=draw(json_objects), output=draw(texts))
        elif op == "message":
            event = MessageSent(session_id=sid, text=draw(free_text))
        elif op == "permission":
            event = PermissionDecided(
                session_id=sid,
                permission="edit",
                reply=draw(st.sampled_from(["once", "always", "reject"])),
                reason="policy",
            )
        elif op == "adopt":
            event = SessionAdopted(
                session_id=sid, engine=f"boot/{k}/1/e{k}", previous_engine=None, reason="its engine stopped"
            )
        elif op == "budget":
            event = BudgetExceeded(session_id=sid, limit="tokens", allowed=100, used=150, charged_to=sid)
        elif op == "end":
            kind = draw(st.sampled_from(TERMINAL_EVENTS))
            if kind == "completed":
                event = AgentCompleted(session_id=sid, summary=draw(st.none() | free_text))
            elif kind == "stopped":
                event = AgentStopped(session_id=sid, reason="operator stop", by="ops")
            elif kind == "failed":
                event = AgentFailed(session_id=sid, error="boom", kind="crash")
            else:
                event = SessionInterrupted(session_id=sid, reason="engine restarted")
            life.terminal.add(sid)
        else:  # revoke the session and every spawned descendant
            subtree = life.descendants(sid)
            event = DelegationRevoked(
                session_id=sid, by="operator", reason="scope withdrawn", subtree=subtree
            )
            life.terminal.update([sid, *subtree])
        life.steps.append((sid, event))
    if not life.spawned:
        spawn(0)
    return life
