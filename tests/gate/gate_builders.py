"""Plain builders for gate tests: the ct_dev fixture, chains of delegations, verdict helpers.

Imported as `tests.gate.gate_builders`; the gate_ prefix keeps it from shadowing another suite's
helper module (pytest puts tests/gate on sys.path).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gate import ChainContext, Constitution, DirectoryFacts, Hop, RemainingBudget, evaluate
from schemas import format_rfc3339, parse_rfc3339
from schemas.events import Finding, Verdict

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_dev_spawn_request.json"
#: SHA-256 of the ct_dev fixture exactly as shared: the copy must stay byte-identical.
FIXTURE_SHA256 = "633093581189718f733e2fd1684b0cf5cc5fc312c176cfd4b4e6d3b6318070b3"

#: A time shortly after the fixture's delegation (2025-10-01T08:05:00Z).
NOW = datetime(2025, 10, 1, 9, 0, tzinfo=UTC)
ROLES = frozenset(
    {"backend_specialist", "frontend_specialist", "tester", "reviewer", "documenter", "project_manager"}
)
#: A project folder that needs no disk: the gate only reads the facts it is handed.
VIRTUAL_ROOT = "/srv/work"
VIRTUAL_PROJECT = "/srv/work/project"


def load_fixture(project_directory: str | Path | None = None) -> dict[str, Any]:
    """The ct_dev payload as a fresh dict, optionally pointed at another project folder."""
    request: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    if project_directory is not None:
        request["project_directory"] = str(project_directory)
    return request


def at(text: str, delta: timedelta) -> str:
    """Shift an RFC 3339 timestamp."""
    return format_rfc3339(parse_rfc3339(text) + delta)


def delegate(
    parent: dict[str, Any], role: str, *, after: timedelta = timedelta(minutes=5), **dc: Any
) -> dict[str, Any]:
    """The request by which `parent`'s delegate hands part of its work to `role` (a sound next hop)."""
    child = copy.deepcopy(parent)
    child["role"] = role
    above = parent["delegation_context"]
    ctx = child["delegation_context"]
    ctx["delegator"] = above["delegated_to"]
    ctx["delegator_cap"] = above["delegated_cap"]
    ctx["delegated_to"] = role
    ctx["delegated_cap"] = f"{above['delegated_cap']}, the part for {role}"
    ctx["delegated_at"] = at(above["delegated_at"], after)
    ctx.update(dc)
    return child


def chain_of(request: dict[str, Any], roles: Sequence[str]) -> list[dict[str, Any]]:
    """`request` followed by one delegation per role, each to the next."""
    out = [request]
    for role in roles:
        out.append(delegate(out[-1], role))
    return out


def hops(
    requests: Iterable[dict[str, Any]],
    *,
    revoked: Iterable[int] = (),
    remaining: dict[int, RemainingBudget] | None = None,
    expires: dict[int, datetime] | None = None,
) -> tuple[Hop, ...]:
    """Admitted hops for `requests` (root first), sessions named s0, s1, ..."""
    revoked = set(revoked)
    remaining = remaining or {}
    expires = expires or {}
    return tuple(
        Hop.from_request(
            f"s{i}",
            request,
            revoked=i in revoked,
            budget_remaining=remaining.get(i),
            expires_at=expires.get(i),
        )
        for i, request in enumerate(requests)
    )


def facts_for(path: str | Path) -> DirectoryFacts:
    """Facts about a real folder, resolved the way the engine does it."""
    import os

    text = str(path)
    return DirectoryFacts(
        path=text, exists=os.path.exists(text), is_dir=os.path.isdir(text), real_path=os.path.realpath(text)
    )


def virtual_facts(path: str = VIRTUAL_PROJECT) -> DirectoryFacts:
    return DirectoryFacts(path=path, exists=True, is_dir=True, real_path=path)


def context(
    parents: Sequence[Hop] = (),
    *,
    directory: DirectoryFacts | None = None,
    known_roles: Iterable[str] | None = ROLES,
    revoked_sessions: Iterable[str] = (),
    ledger_head: str | None = None,
) -> ChainContext:
    return ChainContext(
        parents=tuple(parents),
        revoked_sessions=frozenset(revoked_sessions),
        directory=directory if directory is not None else virtual_facts(),
        known_roles=None if known_roles is None else frozenset(known_roles),
        ledger_head=ledger_head,
    )


def judge_chain(
    requests: Sequence[dict[str, Any]],
    constitution: Constitution,
    *,
    now: datetime = NOW,
    directory: DirectoryFacts | None = None,
    **hop_options: Any,
) -> Verdict:
    """Evaluate the last of `requests` with the others as its admitted ancestry."""
    parents = hops(requests[:-1], **hop_options)
    request = requests[-1]
    if directory is None:
        directory = virtual_facts(request.get("project_directory", VIRTUAL_PROJECT))
    return evaluate(request, context(parents, directory=directory), now, constitution)


def findings(verdict: Verdict, rule: str | None = None) -> list[Finding]:
    """Every finding (violations, then warnings), or only those of one rule."""
    found = [*verdict.violations, *verdict.warnings]
    return [f for f in found if rule is None or f.rule == rule]


def violated(verdict: Verdict) -> set[tuple[str, str]]:
    """(rule, path) of every violation."""
    return {(f.rule, f.path) for f in verdict.violations}


def virtual_constitution(**fields: Any) -> Constitution:
    """A constitution whose allowed root is the virtual project's folder."""
    return Constitution.model_validate({"allowed_roots": [VIRTUAL_ROOT], **fields})


def virtual_request() -> dict[str, Any]:
    return load_fixture(VIRTUAL_PROJECT)
