"""Bearer tokens bound to sessions: a call made with a session's token is that session's child.

The engine gives every spawned agent a random token of its own in the agent's OpenCode MCP
config. The token, not anything the caller claims, decides the parent of a nested delegation.

A token is bound to its one owner once, for good. A warm pool's server gets its token before any
agent exists (``mint``): OpenCode opens its MCP connection to us with it while the server warms
up, and the token is bound to the agent's session when the server is taken (``bind``). Until
then the token opens MCP's handshake (initialize, tools/list) and nothing else: its tool calls
are refused (``engine/mcp_server.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastmcp.server.auth import AccessToken, TokenVerifier

OPERATOR = "operator"
#: the claim of a verified token that names its owner (None while a minted token is not bound)
OWNER_CLAIM = "owner"


class SessionTokens:
    """token -> owner: a session id, OPERATOR (the main agent over HTTP), or nobody yet."""

    def __init__(self) -> None:
        self._owner: dict[str, str | None] = {}
        self._by_owner: dict[str, list[str]] = {}

    def mint(self) -> str:
        """A new token that belongs to nobody yet (see ``bind``)."""
        token = secrets.token_urlsafe(32)
        self._owner[token] = None
        return token

    def bind(self, token: str, owner: str) -> None:
        """Give a minted token its owner; ValueError if it is unknown, revoked or bound already."""
        if token not in self._owner or self._owner[token] is not None:
            raise ValueError("only a minted token that is not bound yet can be bound")
        self._owner[token] = owner
        self._by_owner.setdefault(owner, []).append(token)

    def issue(self, owner: str, token: str | None = None) -> str:
        """A token bound to ``owner`` at once: a new one, or ``token`` (e.g. the operator's own)."""
        if token is None:
            token = self.mint()
        elif token in self._owner:
            raise ValueError("this token is already known")
        else:
            self._owner[token] = None
        self.bind(token, owner)
        return token

    def revoke(self, owner: str) -> None:
        """Every token of ``owner`` stops working."""
        for token in self._by_owner.pop(owner, ()):
            self._owner.pop(token, None)

    def discard(self, token: str) -> None:
        """Forget a minted token that will never be bound (its pooled server went to no agent)."""
        if token in self._owner and self._owner[token] is None:
            del self._owner[token]

    def lookup(self, token: str) -> tuple[bool, str | None]:
        """(known, owner), owner None while a minted token is not bound; compared in constant time."""
        for known, owner in self._owner.items():
            if hmac.compare_digest(known, token):
                return True, owner
        return False, None

    def owner(self, token: str) -> str | None:
        return self.lookup(token)[1]


class SessionTokenVerifier(TokenVerifier):
    """FastMCP verifier over SessionTokens, asked on every HTTP request.

    The owner travels in the ``owner`` claim. The principal (``client_id``) is derived from the
    token alone, so it stays the same when a minted token is bound: the MCP session OpenCode
    opened with it during the warm-up stays valid (the MCP SDK serves a session only to the
    principal that opened it)."""

    def __init__(self, tokens: SessionTokens) -> None:
        super().__init__()
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        known, owner = self.tokens.lookup(token)
        if not known:
            return None
        principal = "token-" + hashlib.sha256(token.encode()).hexdigest()[:16]
        return AccessToken(token=token, client_id=principal, scopes=[], claims={OWNER_CLAIM: owner})
