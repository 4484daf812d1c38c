"""Re-running recorded gate decisions from the ledger alone.

Each decision is judged again with `gate.evaluate`, with the context rebuilt as of the ledger head
it recorded (parents, revocations, remaining budgets from the scan; directory and role catalogue
from the recorded `facts`; `now` = the recorded `evaluated_at`), once under the rules recorded
then (the `constitution.loaded` document whose hash is the verdict's `ruleset_hash`, re-validated
and re-hashed) and once under the rules in force now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

import gate
from engine.audit.scan import AncestorAt, ContextAt, Ev, LedgerScan
from ledger.entry import us_to_datetime
from schemas.base import parse_rfc3339
from schemas.requests import SpawnRequest


class Requests:
    """The raw request of each stream (its delegation.requested), validated once when needed."""

    def __init__(self, scan: LedgerScan) -> None:
        self.scan = scan
        self._models: dict[str, SpawnRequest | None] = {}

    def raw(self, stream: str) -> dict[str, Any] | None:
        ev = self.scan.first(stream, "delegation.requested")
        if ev is None or ev.data is None or not isinstance(ev.data.get("request"), dict):
            return None
        return ev.data["request"]  # type: ignore[no-any-return]

    def model(self, stream: str) -> SpawnRequest | None:
        if stream not in self._models:
            raw = self.raw(stream)
            try:
                self._models[stream] = None if raw is None else SpawnRequest.model_validate(raw)
            except ValidationError:
                self._models[stream] = None
        return self._models[stream]


@dataclass
class Rulebook:
    """The rule sets an audit can judge with: the recorded ones (by hash) and the current one."""

    current: gate.Constitution
    current_source: str | None
    current_hash: str = ""
    documents: dict[str, Ev] = field(default_factory=dict)
    _resolved: dict[str, tuple[gate.Constitution | None, str | None]] = field(default_factory=dict)

    @classmethod
    def from_scan(cls, scan: LedgerScan, current: gate.Constitution, source: str | None) -> Rulebook:
        book = cls(current, source, current.ruleset_hash)
        for ev in scan.constitutions:
            if ev.data is not None:
                book.documents.setdefault(str(ev.data.get("ruleset_hash")), ev)
        return book

    def recorded(self, ruleset_hash: str) -> tuple[gate.Constitution | None, str | None]:
        """(the constitution whose hash is `ruleset_hash`, None) or (None, why it cannot be rebuilt)."""
        if ruleset_hash not in self._resolved:
            self._resolved[ruleset_hash] = self._resolve(ruleset_hash)
        return self._resolved[ruleset_hash]

    def _resolve(self, ruleset_hash: str) -> tuple[gate.Constitution | None, str | None]:
        ev = self.documents.get(ruleset_hash)
        if ev is None or ev.data is None:
            if self.current_hash == ruleset_hash:
                return self.current, None
            return None, f"no constitution.loaded entry records the rules {ruleset_hash}"
        document = dict(ev.data.get("document") or {})
        version = document.pop("rules_version", None)
        if version != gate.RULES_VERSION:
            return None, (
                f"the rules {ruleset_hash} (seq {ev.seq}) were recorded under rules version "
                f"{version!r}; this auditor runs {gate.RULES_VERSION!r}"
            )
        try:
            constitution = gate.Constitution.model_validate(document)
        except ValidationError as exc:
            return (
                None,
                f"the constitution recorded at seq {ev.seq} no longer validates: {exc.errors()[0]['msg']}",
            )
        if constitution.ruleset_hash != ruleset_hash:
            return None, (
                f"the constitution recorded at seq {ev.seq} hashes to {constitution.ruleset_hash}, "
                f"not to the recorded {ruleset_hash}"
            )
        return constitution, None


def _finding_keys(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{f.get('rule')}@{f.get('hop')}:{f.get('path')}" for f in findings)


def _verdict_keys(findings: list[Any]) -> list[str]:
    return sorted(f"{f.rule}@{f.hop}:{f.path}" for f in findings)


def _outcome(
    recorded: dict[str, Any], verdict: gate.Verdict | None, ruleset_hash: str | None, problem: str | None
) -> dict[str, Any]:
    """How a re-run compares with the recorded verdict (`ruleset_hash`: the rules it ran under).
    (Keys in order: the report's encoder then has none to sort.)"""
    if verdict is None or ruleset_hash is None:
        return {"available": False, "reason": problem, "ruleset_hash": ruleset_hash}
    old_keys = _finding_keys(recorded.get("violations", [])) + _finding_keys(recorded.get("warnings", []))
    new_keys = _verdict_keys(verdict.violations) + _verdict_keys(verdict.warnings)
    same = old_keys == new_keys
    return {
        "added": [] if same else sorted(set(new_keys) - set(old_keys)),
        "available": True,
        "decision": verdict.decision,
        "removed": [] if same else sorted(set(old_keys) - set(new_keys)),
        "ruleset_hash": ruleset_hash,
        "same_decision": verdict.decision == recorded.get("decision"),
        "same_findings": same,
        "violations": sorted({f.rule for f in verdict.violations}),
        "warnings": sorted({f.rule for f in verdict.warnings}),
    }


def _unavailable(notes: list[str], context: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "context": context,
        "current_rules": None,
        "exact": False,
        "notes": notes,
        "one_evaluation": False,
        "recorded_rules": None,
        "status": "unavailable",
    }


class Rerunner:
    """Re-runs decisions; hops of the same parent state are built once (their compiled views cached)."""

    def __init__(self, scan: LedgerScan, requests: Requests, rules: Rulebook) -> None:
        self.scan = scan
        self.requests = requests
        self.rules = rules
        self._hops: dict[tuple[str, bool, int | None, float | None], gate.Hop] = {}
        self._directories: dict[tuple[Any, ...], gate.DirectoryFacts] = {}
        self._catalogues: dict[tuple[Any, ...], frozenset[str]] = {}

    def _hop(self, a: AncestorAt) -> gate.Hop | None:
        tokens = None if a.max_tokens is None else int(a.max_tokens) - a.subtree_tokens
        cost = None if a.max_cost_usd is None else float(a.max_cost_usd) - a.subtree_cost_usd
        key = (a.session_id, a.revoked, tokens, cost)
        hop = self._hops.get(key)
        if hop is None:
            request = self.requests.model(a.session_id)
            if request is None:
                return None
            hop = gate.Hop(
                a.session_id,
                request,
                revoked=a.revoked,
                budget_remaining=gate.RemainingBudget(tokens=tokens, cost_usd=cost),
            )
            self._hops[key] = hop
        return hop

    def context(
        self, ctx: ContextAt, facts: dict[str, Any], head: str | None
    ) -> tuple[gate.ChainContext | None, str]:
        hops = []
        for a in ctx.parents:
            hop = self._hop(a)
            if hop is None:
                return (
                    None,
                    f"the request of parent session {a.session_id} is unavailable (pruned or invalid)",
                )
            hops.append(hop)
        return gate.ChainContext(
            parents=tuple(hops),
            revoked_sessions=ctx.revoked,
            directory=self._directory(facts.get("directory")),
            known_roles=self._roles(facts.get("known_roles")),
            ledger_head=head,
        ), ""

    def _directory(self, d: Any) -> gate.DirectoryFacts | None:
        """The recorded directory facts (one object per distinct record)."""
        if not isinstance(d, dict):
            return None
        key = (str(d.get("path")), bool(d.get("exists")), bool(d.get("is_dir")), d.get("real_path"))
        if key not in self._directories:
            self._directories[key] = gate.DirectoryFacts(
                path=key[0], exists=key[1], is_dir=key[2], real_path=key[3]
            )
        return self._directories[key]

    def _roles(self, roles: Any) -> frozenset[str] | None:
        """The recorded role catalogue (None when it was not recorded: ROLE-01 then warns)."""
        if not isinstance(roles, list):
            return None
        key = tuple(roles)
        if key not in self._catalogues:
            self._catalogues[key] = frozenset(roles)
        return self._catalogues[key]

    def rerun(self, stream: str) -> dict[str, Any]:
        """The re-run of one stream's decision: context used, outcome under recorded and current rules.
        When the recorded rules are the current ones (same hash), the gate being a pure function, one
        evaluation answers both: `one_evaluation` says so, and both outcomes are that one."""
        decided = self.scan.first(stream, "gate.decided")
        if decided is None or decided.data is None:
            why = (
                "no gate.decided entry"
                if decided is None
                else f"the gate.decided payload (seq {decided.seq}) is pruned"
            )
            return _unavailable([why], None)
        data = decided.data
        recorded = data["verdict"]
        notes: list[str] = []
        raw = self.requests.raw(stream)
        representable = raw is not None and set(raw) != {"unrepresentable"}
        if not representable:
            notes.append("the recorded request is unavailable (pruned, or not representable as JSON)")
        ctx = self.scan.contexts.get(stream)
        facts = data.get("facts") or {}
        evaluated_at = data.get("evaluated_at")
        exact = bool(facts) and evaluated_at is not None and ctx is not None and ctx.head_seq is not None
        if not facts or evaluated_at is None:
            notes.append(
                "the decision recorded no evaluated_at/facts: re-run approximated with the entry time "
                "and without directory facts or role catalogue"
            )
        if ctx is None:  # no gate.decided seen by the fold: nothing to rebuild the context from
            return _unavailable(notes, None)
        if ctx.head_seq is None:
            notes.append(
                "the verdict's ledger_head is not in the chain: context taken just before the decision"
            )
        if ctx.broken_ancestry:
            notes.append(ctx.broken_ancestry)
        rebuilt = [a.session_id for a in ctx.parents]
        if isinstance(facts.get("parents"), list) and facts["parents"] != rebuilt:
            notes.append(f"the recorded parents {facts['parents']} differ from the rebuilt chain {rebuilt}")
            exact = False
        context = {
            "as_of_seq": ctx.head_seq,
            "evaluated_at": evaluated_at,
            "facts_recorded": bool(facts),
            "parents": rebuilt,
            "revoked_on_path": [
                a.session_id for a in ctx.parents if a.revoked or a.session_id in ctx.revoked
            ],
        }
        chain = None
        if representable:
            chain, problem = self.context(ctx, facts, recorded.get("ledger_head"))
            if chain is None:
                notes.append(problem)
        if chain is None or raw is None:
            return _unavailable(notes, context)
        return self._judge(decided, data, raw, chain, context, notes, exact)

    def _judge(
        self,
        decided: Ev,
        data: dict[str, Any],
        raw: dict[str, Any],
        chain: gate.ChainContext,
        context: dict[str, Any],
        notes: list[str],
        exact: bool,
    ) -> dict[str, Any]:
        recorded = data["verdict"]
        now = _when(data.get("evaluated_at"), decided.at_us)
        recorded_hash = str(recorded.get("ruleset_hash"))
        old, problem = self.rules.recorded(recorded_hash)
        model = self.requests.model(decided.stream)  # validated once; judged as its raw form would be
        request: dict[str, Any] | SpawnRequest = raw if model is None else model
        old_verdict = None if old is None else gate.evaluate(request, chain, now, old)
        under_old = _outcome(recorded, old_verdict, old and recorded_hash, problem)
        one = old is not None and recorded_hash == self.rules.current_hash
        if one:  # one rule set, a pure function: one evaluation answers both
            under_new = under_old
        else:
            new_verdict = gate.evaluate(request, chain, now, self.rules.current)
            under_new = _outcome(recorded, new_verdict, self.rules.current_hash, None)
        differs = not under_new["same_decision"] or (
            under_old["available"] and not under_old["same_decision"]
        )
        return {
            "context": context,
            "current_rules": under_new,
            "exact": exact,
            "notes": notes,
            "one_evaluation": one,
            "recorded_rules": under_old,
            "status": "differs" if differs else ("reproduced" if exact else "approximate"),
        }


def _when(value: Any, fallback_us: int) -> datetime:
    if isinstance(value, str):
        try:
            return parse_rfc3339(value)
        except ValueError:
            pass
    return us_to_datetime(fallback_us)
