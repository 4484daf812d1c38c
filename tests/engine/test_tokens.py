"""Session tokens (engine/tokens.py): minted for a pooled server, bound once to one session."""

from __future__ import annotations

import pytest

from engine.tokens import OPERATOR, OWNER_CLAIM, SessionTokens, SessionTokenVerifier


def test_a_minted_token_belongs_to_nobody_until_bound_once() -> None:
    tokens = SessionTokens()
    token = tokens.mint()
    assert tokens.lookup(token) == (True, None)
    tokens.bind(token, "session-a")
    assert tokens.lookup(token) == (True, "session-a")
    with pytest.raises(ValueError):
        tokens.bind(token, "session-b")  # bound for good: never handed to a second session
    assert tokens.owner(token) == "session-a"
    tokens.revoke("session-a")
    assert tokens.lookup(token) == (False, None)
    with pytest.raises(ValueError):
        tokens.bind(token, "session-b")  # a revoked token is never revived


def test_issue_discard_and_unknown_tokens() -> None:
    tokens = SessionTokens()
    issued = tokens.issue("session-a")
    given = tokens.issue(OPERATOR, token="the-operators-own")
    assert tokens.owner(issued) == "session-a"
    assert tokens.owner(given) == OPERATOR
    with pytest.raises(ValueError):
        tokens.issue("session-b", token="the-operators-own")
    with pytest.raises(ValueError):
        tokens.bind("never-minted", "session-a")
    minted = tokens.mint()
    tokens.discard(minted)  # its pooled server went to no agent
    assert tokens.lookup(minted) == (False, None)
    tokens.discard(issued)  # only unbound tokens are discarded; a bound one ends with its session
    assert tokens.owner(issued) == "session-a"
    assert tokens.lookup("x" * 43) == (False, None)


@pytest.mark.asyncio
async def test_the_verifier_keeps_the_principal_when_the_token_is_bound() -> None:
    """The MCP SDK serves an MCP session only to the principal that opened it: binding a token
    changes the owner claim, never the principal, so a connection made during the warm-up lives on."""
    tokens = SessionTokens()
    verifier = SessionTokenVerifier(tokens)
    token = tokens.mint()
    before = await verifier.verify_token(token)
    assert before is not None
    assert before.claims[OWNER_CLAIM] is None
    tokens.bind(token, "session-a")
    after = await verifier.verify_token(token)
    assert after is not None
    assert after.claims[OWNER_CLAIM] == "session-a"
    assert after.client_id == before.client_id
    assert token not in after.client_id
    other = await verifier.verify_token(tokens.issue("session-b"))
    assert other is not None
    assert other.client_id != after.client_id
    tokens.revoke("session-a")
    assert await verifier.verify_token(token) is None
