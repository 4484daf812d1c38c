"""Bearer tokens bound to sessions: a call made with a session's token is that session's child.

The engine issues one random token per spawned agent and puts it in the agent's OpenCode MCP
config. The token, not anything the caller claims, decides the parent of a nested delegation.
"""

from __future__ import annotations

import hmac
import secrets

from fastmcp.server.auth import AccessToken, TokenVerifier

OPERATOR = "operator"


class SessionTokens:
    """token -> session id (or OPERATOR for the main agent's token over HTTP)."""

    def __init__(self) -> None:
        self._by_token: dict[str, str] = {}
        self._by_session: dict[str, str] = {}

    def issue(self, session_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self._by_token[token] = session_id
        self._by_session[session_id] = token
        return token

    def revoke(self, session_id: str) -> None:
        token = self._by_session.pop(session_id, None)
        if token is not None:
            self._by_token.pop(token, None)

    def owner(self, token: str) -> str | None:
        for known, owner in self._by_token.items():
            if hmac.compare_digest(known, token):
                return owner
        return None


class SessionTokenVerifier(TokenVerifier):
    """FastMCP verifier over SessionTokens: `client_id` is the session the token belongs to."""

    def __init__(self, tokens: SessionTokens) -> None:
        super().__init__()
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        owner = self.tokens.owner(token)
        if owner is None:
            return None
        return AccessToken(token=token, client_id=owner, scopes=[])
