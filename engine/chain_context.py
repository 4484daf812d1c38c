"""Build the gate's ChainContext from the ledger and the filesystem (the gate never looks itself)."""

from __future__ import annotations

import os
from typing import Any

from gate import ChainContext, DirectoryFacts, Hop, RemainingBudget
from ledger import Ledger
from schemas.requests import SpawnRequest
from schemas.state import SessionState


def recorded_request(ledger: Ledger, session_id: str) -> dict[str, Any] | None:
    """The raw request that created a session (its stream's delegation.requested event)."""
    for entry in ledger.entries(stream=session_id, types=["delegation.requested"], limit=1):
        data = entry.data()
        if data is not None:
            return data["request"]
    return None


def remaining(state: SessionState) -> RemainingBudget:
    tokens = None if state.max_tokens is None else state.max_tokens - state.subtree_tokens
    cost = None if state.max_cost_usd is None else state.max_cost_usd - state.subtree_cost_usd
    return RemainingBudget(tokens=tokens, cost_usd=cost)


def ancestry(ledger: Ledger, parent_session_id: str | None) -> list[SessionState]:
    """The sessions from the root down to `parent_session_id` (empty for a root delegation)."""
    chain: list[SessionState] = []
    seen: set[str] = set()
    sid = parent_session_id
    while sid and sid not in seen:
        seen.add(sid)
        state = ledger.session(sid)
        if state is None:
            break
        chain.append(state)
        sid = state.parent_session_id
    return chain[::-1]


def directory_facts(path: Any) -> DirectoryFacts | None:
    if not isinstance(path, str) or not path:
        return None
    return DirectoryFacts(
        path=path,
        exists=os.path.exists(path),
        is_dir=os.path.isdir(path),
        real_path=os.path.realpath(path) if os.path.exists(path) else None,
    )


def build_context(
    ledger: Ledger, raw: dict[str, Any], parent_session_id: str | None, known_roles: frozenset[str] | None
) -> ChainContext:
    hops = []
    for state in ancestry(ledger, parent_session_id):
        request = recorded_request(ledger, state.session_id)
        if request is None:
            continue
        expires = None
        hops.append(
            Hop(
                state.session_id,
                SpawnRequest.model_validate(request),
                revoked=state.revoked,
                budget_remaining=remaining(state),
                expires_at=expires,
            )
        )
    revoked = ledger.revoked_sessions()
    return ChainContext(
        parents=tuple(hops),
        revoked_sessions=revoked,
        directory=directory_facts(raw.get("project_directory")),
        known_roles=known_roles,
        ledger_head=ledger.head().hex,
    )
