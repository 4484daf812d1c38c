"""ID-01..ID-04: the request is consistent about who asked, for which task, to whom."""

from __future__ import annotations

from gate.normalise import principal_key
from gate.rules.base import Rule
from gate.subject import Subject
from schemas.events import Finding


class RequesterIsAuthority(Rule):
    id = "ID-01"
    summary = "original_task.requester is cap_origin.ultimate_authority"
    needs = frozenset({"task", "origin"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.task is not None
        assert s.origin is not None
        requester, authority = s.task.requester, s.origin.ultimate_authority
        if principal_key(requester) == principal_key(authority):
            return []
        return [
            s.finding(
                self.id,
                "original_task.requester",
                f"original_task.requester ({requester!r}) is not cap_origin.ultimate_authority "
                f"({authority!r}): the task must be requested by the authority that granted it",
                expected=authority,
                actual=requester,
            )
        ]


class TaskIdMatches(Rule):
    id = "ID-02"
    summary = "the request's task_id equals original_task.task_id"
    needs = frozenset({"task_id", "task"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.task is not None
        if s.task_id == s.task.task_id:
            return []
        return [
            s.finding(
                self.id,
                "task_id",
                f"task_id ({s.task_id!r}) differs from original_task.task_id ({s.task.task_id!r}): "
                "a delegation must belong to the task it carries",
                expected=s.task.task_id,
                actual=s.task_id,
            )
        ]


class DelegatedToIsRole(Rule):
    id = "ID-03"
    summary = "delegation_context.delegated_to equals the requested role"
    needs = frozenset({"role", "delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        assert s.role is not None
        delegated_to = s.delegation.delegated_to
        if principal_key(delegated_to) == principal_key(s.role):
            return []
        return [
            s.finding(
                self.id,
                "delegation_context.delegated_to",
                f"delegation_context.delegated_to ({delegated_to!r}) is not the requested role ({s.role!r}): "
                "the capability must go to the agent that is spawned",
                expected=s.role,
                actual=delegated_to,
            )
        ]


class NoSelfDelegation(Rule):
    id = "ID-04"
    summary = "the delegator differs from delegated_to (no self-delegation)"
    needs = frozenset({"delegation"})

    def check(self, s: Subject) -> list[Finding]:
        assert s.delegation is not None
        delegator, delegated_to = s.delegation.delegator, s.delegation.delegated_to
        if principal_key(delegator) != principal_key(delegated_to):
            return []
        return [
            s.finding(
                self.id,
                "delegation_context.delegated_to",
                f"delegation_context.delegated_to ({delegated_to!r}) is the delegator itself "
                f"({delegator!r}): an agent cannot delegate to itself",
                expected=f"a principal other than {delegator!r}",
                actual=delegated_to,
            )
        ]
