"""DEP-01, BUD-01, MOD-01: the limits of the constitution (with per-role overrides) and of the chain."""

from __future__ import annotations

from fnmatch import fnmatchcase

from gate.rules.base import Rule
from gate.subject import Subject
from schemas.events import Finding

#: Costs are sums of floats: a child may match its parent's remainder up to this much.
_COST_TOLERANCE = 1e-9
_DIMENSIONS = (("max_tokens", "tokens", "tokens"), ("max_cost_usd", "cost_usd", "USD"))


class DepthLimit(Rule):
    id = "DEP-01"
    summary = "the new hop's depth (its number of ancestors) is at most max_depth (role overrides apply)"

    def check(self, s: Subject) -> list[Finding]:
        limit = s.policy.max_depth
        if s.hop <= limit:
            return []
        return [
            s.finding(
                self.id,
                "",
                f"this delegation would be at depth {s.hop} (hop {s.hop} below the root), deeper than "
                f"{s.policy.source('max_depth')} {limit} allows: the chain is too long",
                expected=f"<= {limit}",
                actual=s.hop,
            )
        ]


class BudgetConserved(Rule):
    id = "BUD-01"
    summary = "a child's budget fits its ancestors' remaining budget and its role ceiling (strict: required)"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        out = []
        for index, hop in enumerate(s.chain.parents):
            left = hop.budget_remaining
            if left is None:
                continue
            spent = [
                f"{value} {unit}"
                for value, unit in ((left.tokens, "tokens"), (left.cost_usd, "USD"))
                if value is not None and value <= 0
            ]
            if spent:
                out.append(
                    s.finding(
                        self.id,
                        "delegation_context.budget",
                        f"hop {index} ({hop.role}, session {hop.session_id}) has no budget left "
                        f"({', '.join(spent)}): nothing more may be delegated under it",
                        expected="> 0",
                        actual=left.tokens if left.tokens is not None and left.tokens <= 0 else left.cost_usd,
                        hop=index,
                    )
                )
        bounds = s.chain.budget_bounds
        budget = s.delegation.budget
        if budget is None:
            if s.strict and s.constitution.default_budget is None:
                left = "; ".join(f"hop {i} has {v} {name} left" for name, (i, v) in bounds.items())
                out.append(
                    s.finding(
                        self.id,
                        "delegation_context.budget",
                        "delegation_context.budget is missing: the strict profile requires a budget; add "
                        "{max_tokens, max_cost_usd}" + (f" ({left})" if left else ""),
                        expected="{max_tokens, max_cost_usd}",
                        actual=None,
                    )
                )
            return out
        for field, remaining_name, unit in _DIMENSIONS:
            value = getattr(budget, field)
            if value is None:
                continue
            path = f"delegation_context.budget.{field}"
            bound = bounds.get(remaining_name)
            if bound is not None and value > bound[1] + (_COST_TOLERANCE if unit == "USD" else 0):
                out.append(
                    s.finding(
                        self.id,
                        path,
                        f"{path} ({value} {unit}) exceeds what hop {bound[0]} has left ({bound[1]} {unit}): "
                        "a delegate cannot be given more than its parents can still spend",
                        expected=f"<= {bound[1]}",
                        actual=value,
                    )
                )
            ceiling = getattr(s.policy, field)
            if ceiling is not None and value > ceiling:
                out.append(
                    s.finding(
                        self.id,
                        path,
                        f"{path} ({value} {unit}) exceeds {s.policy.source(field)} ({ceiling} {unit})",
                        expected=f"<= {ceiling}",
                        actual=value,
                    )
                )
        return out


class ModelAllowed(Rule):
    id = "MOD-01"
    summary = "the requested model, when given, is one the constitution allows (role overrides apply)"
    needs = frozenset({"model"})

    def check(self, s: Subject) -> list[Finding]:
        allowed = s.policy.allowed_models
        if s.model is None or not allowed or any(fnmatchcase(s.model, pattern) for pattern in allowed):
            return []
        return [
            s.finding(
                self.id,
                "model",
                f"model {s.model!r} is not allowed by {s.policy.source('allowed_models')} "
                f"({', '.join(repr(m) for m in allowed)})",
                expected=list(allowed),
                actual=s.model,
            )
        ]
