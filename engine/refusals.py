"""Errors the service raises to its callers (MCP tools turn them into tool errors)."""

from __future__ import annotations

from schemas.events import Verdict


class DelegationError(Exception):
    """Base of the service's refusals; the text is what a client reads."""


class DelegationRefused(DelegationError):
    """The gate refused the delegation; the message names every violated rule."""

    def __init__(self, session_id: str, verdict: Verdict) -> None:
        self.session_id = session_id
        self.verdict = verdict
        lines = [
            f"delegation refused by the ConstitutionGate ({len(verdict.violations)} violation(s), "
            f"profile {verdict.profile}, ruleset {verdict.ruleset_hash[:19]}; recorded as {session_id}):"
        ]
        for f in verdict.violations:
            lines.append(f"- {f.rule} at {f.path or '(request)'} (hop {f.hop}): {f.message}")
        super().__init__("\n".join(lines))


class UnknownSession(DelegationError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no delegation session {session_id!r} on the ledger")


class NotAllowed(DelegationError):
    """The caller may not act on that session (e.g. a sub-agent touching another subtree)."""


class SessionNotRunning(DelegationError):
    """The session has already ended."""


class OtherEngine(DelegationError):
    """The session runs under another engine that still runs on the same ledger."""


class OtherEngineGone(DelegationError):
    """The engine that ran the session stopped without recording its end."""


class LedgerUnavailable(DelegationError):
    """The agent ended (stopped: its work could no longer be recorded), but the ledger could not record
    its end; the engine records it as soon as the ledger can write again."""
