"""ATT-01, ATT-02, CON-01: a delegate gets at most what its parent had, and keeps every restriction.

Scopes are compared with the nearest structured reference above the new hop: the closest
ancestor that carries `delegation_context.scopes`, else the root's `cap_origin.scopes` (for a
root hop, the request's own `cap_origin.scopes`). Each link was checked when it was admitted, so
the new hop stays within every scope above it.
"""

from __future__ import annotations

from gate.normalise import norm_text
from gate.rules.base import Rule
from gate.scopes import ScopeSet, compile_scope_set, compile_scopes
from gate.subject import Subject
from schemas.events import Finding

_EXAMPLE = "'repo:src/**#fs/write'"


def scope_reference(s: Subject) -> tuple[str, ScopeSet] | None:
    """(a label for messages, the reference scopes) or None when there is nothing structured above."""
    ref = s.chain.scope_reference
    if ref is not None:
        return f"the scopes of hop {ref[0]}", ref[1]
    if s.chain.parents:
        origin = s.chain.root_origin_scopes
        return None if origin is None else ("cap_origin.scopes", origin)
    if s.origin is None or s.origin.scopes is None:
        return None
    return "cap_origin.scopes", compile_scope_set(tuple(s.origin.scopes))


class ScopesAttenuate(Rule):
    id = "ATT-01"
    summary = "structured scopes, when given: every child scope is covered by a parent scope"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        if s.delegation.scopes is None:
            return []
        ref = scope_reference(s)
        if ref is None:
            return []  # ATT-02 says that nothing structured could be compared
        label, parents = ref
        out = []
        for index, child in enumerate(compile_scopes(s.delegation.scopes)):
            if parents.covering(child) is not None:
                continue
            allowed = parents.texts
            out.append(
                s.finding(
                    self.id,
                    f"delegation_context.scopes[{index}]",
                    f"delegation_context.scopes[{index}] ({child.text!r}) is not covered by any of {label} "
                    f"({', '.join(repr(a) for a in allowed) or 'none'}): a delegation may narrow its scopes, "
                    "never widen them",
                    expected=allowed,
                    actual=child.text,
                )
            )
        return out


class FreeTextCapability(Rule):
    id = "ATT-02"
    summary = (
        "free-text capabilities only: attenuation cannot be checked by machine (warning; error in strict)"
    )
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        ref = scope_reference(s)
        out = []
        if s.delegation.scopes is None:
            within = "" if ref is None else f" within {ref[0]} ({', '.join(repr(t) for t in ref[1].texts)})"
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.scopes",
                    f"delegation_context carries a free-text capability only (delegated_cap "
                    f"{s.delegation.delegated_cap!r}): attenuation cannot be checked by machine; add "
                    f"delegation_context.scopes such as {_EXAMPLE}{within}",
                    expected="a list of scopes '<resource>#<action>'",
                    actual=None,
                    severity=s.soft,
                )
            )
        if ref is None and (s.delegation.scopes is not None or s.strict):
            origin = s.chain.root.cap_origin if s.chain.root is not None else s.origin
            scope = "" if origin is None else f" (original_scope {origin.original_scope!r} is free text)"
            out.append(
                s.finding(
                    self.id,
                    "cap_origin.scopes",
                    f"cap_origin.scopes is missing{scope}: no scope can be checked against what the "
                    f"authority granted; add cap_origin.scopes such as {_EXAMPLE}",
                    expected="a list of scopes '<resource>#<action>'",
                    actual=None,
                    severity=s.soft,
                )
            )
        return out


class ConstraintsInherited(Rule):
    id = "CON-01"
    summary = "a child carries every constraint of its ancestors (after whitespace/case normalisation)"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        inherited = s.chain.inherited_constraints
        if not inherited:
            return []
        mine = {norm_text(text) for text in s.delegation.constraints}
        return [
            s.finding(
                self.id,
                "delegation_context.constraints",
                f"delegation_context.constraints drops {text!r}, a constraint of hop {index}: "
                "a delegation may add constraints, never remove one",
                expected=text,
                actual=list(s.delegation.constraints),
            )
            for key, (index, text) in inherited.items()
            if key not in mine
        ]
