"""TIME-01..TIME-03: timestamps in order, none in the future, expiry within the parent's.

`now` is handed in by the caller: the gate has no clock, so a decision can be replayed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gate.rules.base import Rule, ts
from gate.subject import Subject
from schemas.events import Finding


class TimestampOrder(Rule):
    id = "TIME-01"
    summary = "granted_at <= requested_at <= delegated_at, and delegated_at >= the parent's delegated_at"
    needs = frozenset({"task", "origin", "delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.task is not None
        assert s.origin is not None
        assert s.delegation is not None
        granted, requested, delegated = s.origin.granted_at, s.task.requested_at, s.delegation.delegated_at
        out = []
        if requested < granted:
            out.append(
                s.finding(
                    self.id,
                    "original_task.requested_at",
                    f"original_task.requested_at ({ts(requested)}) is before cap_origin.granted_at "
                    f"({ts(granted)}): requested before its authority was granted",
                    expected=f">= {ts(granted)}",
                    actual=requested,
                )
            )
        if delegated < granted:
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.delegated_at",
                    f"delegation_context.delegated_at ({ts(delegated)}) is before cap_origin.granted_at "
                    f"({ts(granted)}): delegated before its authority was granted",
                    expected=f">= {ts(granted)}",
                    actual=delegated,
                )
            )
        if delegated < requested:
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.delegated_at",
                    f"delegation_context.delegated_at ({ts(delegated)}) is before original_task.requested_at "
                    f"({ts(requested)}): delegated before the task was requested",
                    expected=f">= {ts(requested)}",
                    actual=delegated,
                )
            )
        parent = s.chain.parent
        if parent is not None and delegated < parent.delegation.delegated_at:
            before = parent.delegation.delegated_at
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.delegated_at",
                    f"delegation_context.delegated_at ({ts(delegated)}) is before the delegated_at of its "
                    f"parent hop {s.hop - 1} ({ts(before)}): delegated before its parent",
                    expected=f">= {ts(before)}",
                    actual=delegated,
                )
            )
        return out


class NotInFuture(Rule):
    id = "TIME-02"
    summary = "no timestamp later than now plus the allowed clock skew"

    def check(self, s: Subject) -> list[Finding]:
        skew = s.constitution.clock_skew_seconds
        latest = s.now + timedelta(seconds=skew)
        stamps: list[tuple[str, datetime | None, str]] = []
        if s.origin is not None:
            stamps.append(("cap_origin.granted_at", s.origin.granted_at, "granted"))
        if s.task is not None:
            stamps.append(("original_task.requested_at", s.task.requested_at, "requested"))
        if s.delegation is not None:
            stamps.append(("delegation_context.delegated_at", s.delegation.delegated_at, "delegated"))
        return [
            s.finding(
                self.id,
                path,
                f"{path} ({ts(value)}) is later than now ({ts(s.now)}) plus the allowed clock skew of "
                f"{skew} s: {what} in the future",
                expected=f"<= {ts(latest)}",
                actual=value,
            )
            for path, value, what in stamps
            if value is not None and value > latest
        ]


class Expiry(Rule):
    id = "TIME-03"
    summary = "expires_at, when given, is future, within its parents' and the TTL cap; strict requires it"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        out = []
        bound: tuple[int, datetime] | None = None
        for index, hop in enumerate(s.chain.parents):
            expiry = hop.effective_expiry
            if expiry is None:
                continue
            if bound is None or expiry < bound[1]:
                bound = (index, expiry)
            if expiry <= s.now:
                out.append(
                    s.finding(
                        self.id,
                        "delegation_context.expires_at",
                        f"hop {index} ({hop.role}, session {hop.session_id}) expired at {ts(expiry)} "
                        f"(now {ts(s.now)}): an expired delegation cannot delegate further",
                        expected=f"> {ts(s.now)}",
                        actual=expiry,
                        hop=index,
                    )
                )
        ttl = s.policy.max_ttl_seconds
        cap = s.now + timedelta(seconds=ttl)
        latest = cap if bound is None else min(cap, bound[1])
        expires = s.delegation.expires_at
        if expires is None:
            if s.strict:
                within = (
                    ""
                    if bound is None
                    else f" and no later than the expiry of hop {bound[0]} ({ts(bound[1])})"
                )
                out.append(
                    s.finding(
                        self.id,
                        "delegation_context.expires_at",
                        "delegation_context.expires_at is missing: the strict profile requires an expiry; "
                        f"add one at most {ttl} s after now ({ts(cap)}){within}",
                        expected=f"<= {ts(latest)}",
                        actual=None,
                    )
                )
            return out
        if expires <= s.now:
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.expires_at",
                    f"delegation_context.expires_at ({ts(expires)}) is not in the future (now {ts(s.now)}): "
                    "the delegation would already have expired",
                    expected=f"> {ts(s.now)}",
                    actual=expires,
                )
            )
        elif expires <= s.delegation.delegated_at:
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.expires_at",
                    f"delegation_context.expires_at ({ts(expires)}) is not after "
                    f"delegation_context.delegated_at ({ts(s.delegation.delegated_at)}): it would expire "
                    "before it was delegated",
                    expected=f"> {ts(s.delegation.delegated_at)}",
                    actual=expires,
                )
            )
        if bound is not None and expires > bound[1]:
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.expires_at",
                    f"delegation_context.expires_at ({ts(expires)}) is later than the expiry of hop "
                    f"{bound[0]} ({ts(bound[1])}): a delegation cannot outlive its parent",
                    expected=f"<= {ts(bound[1])}",
                    actual=expires,
                )
            )
        if expires > cap:
            seconds = (expires - s.now).total_seconds()
            out.append(
                s.finding(
                    self.id,
                    "delegation_context.expires_at",
                    f"delegation_context.expires_at ({ts(expires)}) is {seconds:.0f} s after now, more than "
                    f"{s.policy.source('max_ttl_seconds')} ({ttl} s) allows",
                    expected=f"<= {ts(cap)}",
                    actual=expires,
                )
            )
        return out
