"""One pass over the ledger: every entry's header and payload, indexed for the audit.

The scan reads the chain once (`Ledger.entries()`), decodes each payload once, and folds the
projections with the ledger's own `Projector`, so budgets, revocations and states come from the
events alone, never from the stored projection. While folding it captures, for every gate
decision, the state of the chain *as of the ledger head the decision recorded* (the parent hops
with their revocation and remaining budget, and the sessions revoked by then), which is what the
engine handed the gate at the time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ledger import Ledger
from ledger.entry import Head, us_to_datetime
from ledger.projections import PROJECTED_TYPES, DictSessions, Projector

TERMINAL_TYPES = ("agent.completed", "agent.stopped", "agent.failed", "session.interrupted")


@dataclass(frozen=True, slots=True)
class Ev:
    """One entry as the audit sees it: header, hash and decoded payload (None once pruned)."""

    seq: int
    stream: str
    type: str
    at_us: int
    hash: str
    data: dict[str, Any] | None

    def evidence(self) -> dict[str, Any]:
        """The entry's coordinates as evidence: seq, type, hash, time, and whether its payload is gone."""
        return {
            "seq": self.seq,
            "type": self.type,
            "hash": self.hash,
            "recorded_at": iso_us(self.at_us),
            "pruned": self.data is None,
        }


@dataclass(frozen=True, slots=True)
class AncestorAt:
    """A parent hop as the ledger showed it at a decision: what the engine turned into a gate `Hop`."""

    session_id: str
    revoked: bool
    max_tokens: int | None
    max_cost_usd: float | None
    subtree_tokens: int
    subtree_cost_usd: float


@dataclass(frozen=True, slots=True)
class ContextAt:
    """The chain context of one decision, rebuilt as of the ledger head it recorded."""

    head_seq: int | None  # seq of the entry whose hash the verdict recorded (None: not found)
    parents: tuple[AncestorAt, ...]
    revoked: frozenset[str]
    broken_ancestry: str | None = None  # why the parent chain could not be followed


@dataclass
class LedgerScan:
    head: Head
    events: list[Ev] = field(default_factory=list)
    by_stream: dict[str, list[Ev]] = field(default_factory=lambda: defaultdict(list))
    states: DictSessions = field(default_factory=DictSessions)
    contexts: dict[str, ContextAt] = field(default_factory=dict)
    constitutions: list[Ev] = field(default_factory=list)
    prunes: list[Ev] = field(default_factory=list)
    audits: list[Ev] = field(default_factory=list)
    revocations: dict[str, Ev] = field(default_factory=dict)  # session id -> the event that revoked it

    def first(self, stream: str, type_: str) -> Ev | None:
        return next((e for e in self.by_stream.get(stream, ()) if e.type == type_), None)

    def all(self, stream: str, *types: str) -> list[Ev]:
        return [e for e in self.by_stream.get(stream, ()) if e.type in types]

    def terminal(self, stream: str) -> Ev | None:
        return next((e for e in self.by_stream.get(stream, ()) if e.type in TERMINAL_TYPES), None)

    def task_of(self, stream: str) -> str | None:
        """The task a stream belongs to: from its decision, request, spawn, or pruned snapshot."""
        for e in self.by_stream.get(stream, ()):
            d = e.data
            if d is None:
                continue
            if e.type in ("gate.decided", "agent.spawned") and d.get("task_id"):
                return str(d["task_id"])
            if e.type == "delegation.requested" and isinstance(d.get("request"), dict):
                task = d["request"].get("task_id")
                if isinstance(task, str) and task:
                    return task
        state = self.states.get(stream)
        return (state or {}).get("task_id") or None

    def parent_of(self, stream: str) -> str | None:
        for type_ in ("gate.decided", "delegation.requested", "agent.spawned"):
            e = self.first(stream, type_)
            if e is not None and e.data is not None:
                return e.data.get("parent_session_id")
        state = self.states.get(stream)
        return None if state is None else state.get("parent_session_id")


def iso_us(us: int) -> str:
    return us_to_datetime(us).isoformat().replace("+00:00", "Z")


def scan(ledger: Ledger) -> LedgerScan:
    """Read the whole chain once and fold it; capture each decision's context as of its ledger head."""
    head = ledger.head()
    out = LedgerScan(head=head)
    loads = json.loads
    seq_of_hash: dict[str, int] = {}
    decisions: list[Ev] = []
    for entry in ledger.entries(stop=head.size):
        data = None if entry.payload is None else loads(entry.payload)
        ev = Ev(entry.seq, entry.stream, entry.type, entry.recorded_at_us, entry.hash.hex(), data)
        out.events.append(ev)
        out.by_stream[ev.stream].append(ev)
        seq_of_hash[ev.hash] = ev.seq
        if ev.type == "gate.decided":
            decisions.append(ev)
        elif ev.type == "constitution.loaded":
            out.constitutions.append(ev)
        elif ev.type == "ledger.pruned":
            out.prunes.append(ev)
        elif ev.type == "audit.issued":
            out.audits.append(ev)
    capture: dict[int, list[tuple[Ev, bool]]] = defaultdict(list)
    for d in decisions:
        head_hash = (((d.data or {}).get("verdict") or {}).get("ledger_head")) or ""
        at = seq_of_hash.get(head_hash)
        found = at is not None and at < d.seq
        # without a recorded head, the state just before the decision is the best approximation
        capture[at if found else d.seq - 1].append((d, found))  # type: ignore[index]
    _fold(out, capture)
    return out


def _fold(out: LedgerScan, capture: dict[int, list[tuple[Ev, bool]]]) -> None:
    store = out.states
    apply = Projector().apply
    revoked: set[str] = set()
    for ev in out.events:
        if ev.type in PROJECTED_TYPES:
            apply(store, ev.stream, ev.type, ev.data, ev.at_us)
            if ev.data is not None and ev.type == "delegation.revoked":
                for sid in (ev.data["session_id"], *ev.data.get("subtree", [])):
                    if (store.get(sid) or {}).get("revoked"):
                        revoked.add(sid)
                        out.revocations.setdefault(sid, ev)
            elif ev.data is not None and ev.type == "ledger.pruned":
                revoked.update(s["session_id"] for s in ev.data["sessions"] if s["state"].get("revoked"))
        for decision, found in capture.get(ev.seq, ()):
            out.contexts[decision.stream] = _context(
                store, decision, ev.seq if found else None, frozenset(revoked)
            )
    for decision, _found in capture.get(0, ()):
        out.contexts[decision.stream] = _context(store, decision, None, frozenset())


def _context(store: DictSessions, decision: Ev, head_seq: int | None, revoked: frozenset[str]) -> ContextAt:
    parent = (decision.data or {}).get("parent_session_id")
    chain: list[AncestorAt] = []
    seen: set[str] = set()
    broken = None
    while parent:
        if parent in seen:
            broken = f"the parent chain loops at {parent}"
            break
        seen.add(parent)
        state = store.get(parent)
        if state is None:
            broken = f"parent session {parent} is unknown to the ledger at that point"
            break
        chain.append(
            AncestorAt(
                parent,
                bool(state.get("revoked")),
                state.get("max_tokens"),
                state.get("max_cost_usd"),
                int(state.get("subtree_tokens") or 0),
                float(state.get("subtree_cost_usd") or 0.0),
            )
        )
        parent = state.get("parent_session_id")
    return ContextAt(head_seq, tuple(reversed(chain)), revoked, broken)
