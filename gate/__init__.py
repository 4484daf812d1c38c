"""The ConstitutionGate: a pure check of a delegation request against its chain and the constitution.

`evaluate(request, chain, now, constitution) -> Verdict` reads no file, no ledger, no network and
no clock: the engine hands in the raw request, the facts it resolved (`ChainContext`) and the
time, so that an auditor can re-run any decision. Each rule is one small object in `RULES`;
`Gate(rules)` composes them and reports every violation at once. See docs/gate.md.
"""

from gate.constitution import (
    RULES_VERSION,
    BudgetLimit,
    Constitution,
    RoleOverride,
    RolePolicy,
    default_constitution,
    load_constitution,
)
from gate.context import ChainContext, DirectoryFacts, Hop, RemainingBudget
from gate.errors import ConstitutionError, ContextError, GateError, RuleSetError
from gate.gate import Gate, evaluate
from gate.rules import RULES, Rule, rule
from gate.scopes import covers, matches, parse_scope

__all__ = [
    "RULES",
    "RULES_VERSION",
    "BudgetLimit",
    "ChainContext",
    "Constitution",
    "ConstitutionError",
    "ContextError",
    "DirectoryFacts",
    "Gate",
    "GateError",
    "Hop",
    "RemainingBudget",
    "RoleOverride",
    "RolePolicy",
    "Rule",
    "RuleSetError",
    "covers",
    "default_constitution",
    "evaluate",
    "load_constitution",
    "matches",
    "parse_scope",
    "rule",
]
