"""The Gate: a non-empty set of rules, all of them run on every request, all findings reported at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from gate.constitution import Constitution
from gate.context import ChainContext
from gate.errors import ContextError, RuleSetError
from gate.rules import RULES, Rule
from gate.subject import Subject
from schemas.events import Finding, Verdict
from schemas.requests import SpawnRequest

__all__ = ["Gate", "evaluate"]


class Gate:
    """Composes rules like an all-of policy: approved only when no rule reports an error.

    An empty rule set is refused at construction (it would approve everything), and so are two
    rules with one id (their findings could not be told apart).
    """

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[Rule]) -> None:
        rules = tuple(rules)
        if not rules:
            raise RuleSetError("a Gate needs at least one rule: an empty rule set would approve everything")
        ids = [r.id for r in rules]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise RuleSetError(f"a Gate cannot hold two rules with one id (repeated: {', '.join(repeated)})")
        self.rules: tuple[Rule, ...] = rules

    def __repr__(self) -> str:
        return f"Gate({', '.join(r.id for r in self.rules)})"

    def evaluate(
        self,
        request: Mapping[str, Any] | SpawnRequest,
        chain: ChainContext,
        now: datetime,
        constitution: Constitution,
    ) -> Verdict:
        """Judge the raw `request` against its chain at time `now` under `constitution`. A `SpawnRequest`
        already validated from a raw request is judged as that raw request is (it skips validation).

        Never raises on a malformed request: every problem is a finding. ContextError only signals
        a caller's mistake (no ChainContext, no Constitution, a naive `now`).
        """
        _check_arguments(chain, now, constitution)
        subject = Subject(request, chain, now, constitution)
        violations: list[Finding] = []
        warnings: list[Finding] = []
        valid = subject.valid
        for rule in self.rules:
            if not rule.needs <= valid:
                continue
            try:
                found = rule.check(subject)
            except Exception as exc:  # a rule that breaks refuses: the gate fails closed
                found = [
                    subject.finding(
                        rule.id,
                        "",
                        f"rule {rule.id} could not be checked ({type(exc).__name__}: {exc}): refused, "
                        "as the gate fails closed",
                    )
                ]
            for finding in found:
                (violations if finding.severity == "error" else warnings).append(finding)
        return Verdict(
            decision="rejected" if violations else "approved",
            profile=constitution.profile,
            ruleset_hash=constitution.ruleset_hash,
            ledger_head=chain.ledger_head,
            violations=violations,
            warnings=warnings,
        )


def _check_arguments(chain: Any, now: Any, constitution: Any) -> None:
    if not isinstance(chain, ChainContext):
        raise ContextError(f"chain must be a ChainContext (got {type(chain).__name__})")
    if not isinstance(constitution, Constitution):
        raise ContextError(f"constitution must be a Constitution (got {type(constitution).__name__})")
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ContextError(f"now must be a timezone-aware datetime (got {now!r})")


_DEFAULT_GATE = Gate(RULES)


def evaluate(
    request: Mapping[str, Any] | SpawnRequest, chain: ChainContext, now: datetime, constitution: Constitution
) -> Verdict:
    """Judge `request` with every registered rule (see `Gate.evaluate`)."""
    return _DEFAULT_GATE.evaluate(request, chain, now, constitution)
