"""CHN-01..CHN-03, CYC-01, REV-01: the new hop continues its chain, and the chain is sound.

Link rules (CHN-01, CHN-02) compare the new hop with its parent: the links above were checked
when those hops were admitted. Path rules (CHN-03, CYC-01, REV-01) look at the whole path from
the root to the new hop.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gate.normalise import norm_text, principal_key
from gate.rules.base import Rule, ts
from gate.subject import Subject
from schemas.events import Finding


class DelegatorContinuity(Rule):
    id = "CHN-01"
    summary = "a nested hop's delegator is the parent hop's delegated_to"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        parent = s.chain.parent
        if parent is None:
            return []
        delegator, previous = s.delegation.delegator, parent.delegation.delegated_to
        if principal_key(delegator) == principal_key(previous):
            return []
        return [
            s.finding(
                self.id,
                "delegation_context.delegator",
                f"delegation_context.delegator ({delegator!r}) is not the delegated_to of its parent "
                f"hop {s.hop - 1} ({previous!r}): only the agent a capability was delegated to can pass "
                "it on",
                expected=previous,
                actual=delegator,
            )
        ]


class CapabilityRestated(Rule):
    id = "CHN-02"
    summary = "a nested hop's delegator_cap restates the parent hop's delegated_cap"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        parent = s.chain.parent
        if parent is None:
            return []
        claimed, given = s.delegation.delegator_cap, parent.delegation.delegated_cap
        if norm_text(claimed) == norm_text(given):
            return []
        return [
            s.finding(
                self.id,
                "delegation_context.delegator_cap",
                f"delegation_context.delegator_cap ({claimed!r}) does not restate the delegated_cap of "
                f"its parent hop {s.hop - 1} ({given!r}): a delegator can only pass on the capability it "
                "was given",
                expected=given,
                actual=claimed,
            )
        ]


class OriginUnchanged(Rule):
    id = "CHN-03"
    summary = "original_task and cap_origin travel unchanged down the chain (canonically equal to the root's)"

    def check(self, s: Subject) -> list[Finding]:
        root = s.chain.root
        if root is None:
            return []
        out: list[Finding] = []
        for section, mine, theirs in (
            ("original_task", s.task, root.original_task),
            ("cap_origin", s.origin, root.cap_origin),
        ):
            if mine is None or mine == theirs:  # model equality: timestamps compare as instants
                continue
            out.extend(self._differences(s, section, mine, theirs))
        return out

    def _differences(self, s: Subject, section: str, mine: BaseModel, theirs: BaseModel) -> list[Finding]:
        out = []
        for name in type(mine).model_fields:
            a, b = getattr(mine, name), getattr(theirs, name)
            if a == b:
                continue
            path = f"{section}.{name}"
            out.append(
                s.finding(
                    self.id,
                    path,
                    f"{path} ({_show(a)}) differs from the root's ({_show(b)}): original_task and cap_origin "
                    "must travel unchanged down the chain",
                    expected=b,
                    actual=a,
                )
            )
        return out


def _show(value: Any) -> str:
    if hasattr(value, "tzinfo"):
        return ts(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class NoCycle(Rule):
    id = "CYC-01"
    summary = "no principal (role or agent) appears twice on the path from the root to the new hop"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        # The path: the root's delegator, then every hop's delegated_to (and role). A nested hop's
        # delegator is normally its parent's delegated_to; when it is not (a CHN-01 break), it is one
        # more principal on the path.
        entries: list[tuple[str, frozenset[str], str]] = [
            (hop.delegation.delegator, hop.principals, hop.delegation.delegated_to) for hop in s.chain.parents
        ]
        keys = {principal_key(s.delegation.delegated_to)}
        if s.role is not None:
            keys.add(principal_key(s.role))
        entries.append((s.delegation.delegator, frozenset(keys), s.delegation.delegated_to))

        seen: dict[str, tuple[int, str, str]] = {}
        previous: frozenset[str] = frozenset()
        out = []
        for index, (delegator, delegated, name) in enumerate(entries):
            key = principal_key(delegator)
            if key not in previous:
                if key in seen:
                    out.append(self._repeat(s, index, "delegation_context.delegator", delegator, seen, key))
                else:
                    seen[key] = (index, "delegator", delegator)
            for other in delegated:
                if other != key and other in seen:  # delegator == delegated_to is ID-04's finding
                    out.append(self._repeat(s, index, "delegation_context.delegated_to", name, seen, other))
                    break
            for other in delegated:
                seen.setdefault(other, (index, "delegated_to", name))
            previous = delegated
        return out

    def _repeat(
        self, s: Subject, index: int, path: str, name: str, seen: dict[str, tuple[int, str, str]], key: str
    ) -> Finding:
        first, field, first_name = seen[key]
        on_path = sorted({entry[2] for entry in seen.values()})
        return s.finding(
            self.id,
            path,
            f"{path} ({name!r}) already appears on this chain as the {field} of hop {first} "
            f"({first_name!r}): the chain contains a cycle",
            expected=f"a principal not already on the chain ({', '.join(on_path)})",
            actual=name,
            hop=index,
        )


class NotRevoked(Rule):
    id = "REV-01"
    summary = "no hop on the path has been revoked"

    def check(self, s: Subject) -> list[Finding]:
        return [
            s.finding(
                self.id,
                "",
                f"hop {index} ({hop.role}, session {hop.session_id}) has been revoked: nothing may be "
                "delegated under a revoked delegation",
                expected="not revoked",
                actual="revoked",
                hop=index,
            )
            for index, hop in enumerate(s.chain.parents)
            if s.chain.is_revoked(hop)
        ]
