"""What the engine tells the gate about the world: the chain above a new hop, revocations, the folder.

The gate reads no ledger, no file and no clock. The engine resolves these facts (ledger
projections, `os.path.realpath`, the role catalogue) and hands them in as a `ChainContext`, so
that an auditor can re-run a decision from the recorded facts alone.

Derived views of a hop (its compiled scopes, its normalised constraints, its principals) are
computed once per `Hop` object and cached on it: an engine that keeps `Hop` objects for running
sessions pays for them once, however many children those sessions spawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from gate.errors import ContextError
from gate.normalise import norm_text, principal_key
from gate.scopes import ScopeSet, compile_scope_set
from schemas.requests import SpawnRequest
from schemas.responsibility import CapOrigin, DelegationContext, OriginalTask

__all__ = ["ChainContext", "DirectoryFacts", "Hop", "RemainingBudget"]

_T = TypeVar("_T")


class cached_property(Generic[_T]):  # noqa: N801 - named as the functools one it stands for
    """`functools.cached_property` without the lock Python 3.11 takes on every first read (3.12
    dropped it): computed once per object and stored in its `__dict__`, where later reads find it
    first. The views cached here are pure functions of frozen fields: two threads computing one at
    once store equal values."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> _T:
        if instance is None:
            return self  # type: ignore[return-value]
        value: _T = self.func(instance)
        instance.__dict__[self.name] = value
        return value


@dataclass(frozen=True)
class RemainingBudget:
    """What a hop may still spend; None in a field means unlimited. Zero or below means exhausted.

    The engine computes it from the hop's budget minus everything charged to it and its
    descendants (budgets roll up to ancestors).
    """

    tokens: int | None = None
    cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)):
            raise ContextError(f"RemainingBudget.tokens must be an int or None (got {self.tokens!r})")
        if self.cost_usd is not None and (
            isinstance(self.cost_usd, bool)
            or not isinstance(self.cost_usd, int | float)
            or not math.isfinite(self.cost_usd)
        ):
            raise ContextError(
                f"RemainingBudget.cost_usd must be a finite number or None (got {self.cost_usd!r})"
            )


@dataclass(frozen=True)
class Hop:
    """One admitted delegation above the new one: its validated request and what the ledger knows of it.

    `role` defaults to `request.role` and, when given, must agree with it. `expires_at` is the
    expiry the engine resolved for the session (for example from a timeout); the hop's effective
    expiry is the earlier of it and `request.delegation_context.expires_at`.
    """

    session_id: str
    request: SpawnRequest
    role: str = ""
    revoked: bool = False
    budget_remaining: RemainingBudget | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, str) or not self.session_id:
            raise ContextError(f"Hop.session_id must be a non-empty string (got {self.session_id!r})")
        if not isinstance(self.request, SpawnRequest):
            raise ContextError(
                f"Hop.request must be a validated SpawnRequest (got {type(self.request).__name__}); "
                "use Hop.from_request() for a raw dict"
            )
        if not self.role:
            object.__setattr__(self, "role", self.request.role)
        elif self.role != self.request.role:
            raise ContextError(
                f"Hop {self.session_id!r}: role {self.role!r} is not the role of its request "
                f"({self.request.role!r})"
            )
        if self.expires_at is not None and (
            not isinstance(self.expires_at, datetime) or self.expires_at.utcoffset() is None
        ):
            raise ContextError(f"Hop.expires_at must be a timezone-aware datetime (got {self.expires_at!r})")
        if self.budget_remaining is not None and not isinstance(self.budget_remaining, RemainingBudget):
            raise ContextError(
                f"Hop.budget_remaining must be a RemainingBudget or None (got {self.budget_remaining!r})"
            )

    @classmethod
    def from_request(
        cls,
        session_id: str,
        request: SpawnRequest | Mapping[str, Any],
        *,
        role: str = "",
        revoked: bool = False,
        budget_remaining: RemainingBudget | None = None,
        expires_at: datetime | None = None,
    ) -> Hop:
        """Build a hop from a recorded request (a raw dict is validated; an invalid one is a ContextError)."""
        if not isinstance(request, SpawnRequest):
            try:
                request = SpawnRequest.model_validate(request)
            except ValidationError as exc:
                raise ContextError(
                    f"the recorded request of session {session_id!r} is not valid: {exc}"
                ) from exc
        return cls(session_id, request, role, revoked, budget_remaining, expires_at)

    @property
    def original_task(self) -> OriginalTask:
        return self.request.original_task

    @property
    def cap_origin(self) -> CapOrigin:
        return self.request.cap_origin

    @property
    def delegation(self) -> DelegationContext:
        return self.request.delegation_context

    @cached_property
    def scopes(self) -> ScopeSet | None:
        """The hop's structured scopes, compiled; None when it carries free-text capabilities only."""
        scopes = self.delegation.scopes
        return None if scopes is None else compile_scope_set(tuple(scopes))

    @cached_property
    def origin_scopes(self) -> ScopeSet | None:
        """The hop's `cap_origin.scopes`, compiled (None when absent)."""
        scopes = self.cap_origin.scopes
        return None if scopes is None else compile_scope_set(tuple(scopes))

    @cached_property
    def constraints(self) -> dict[str, str]:
        """The hop's constraints keyed by their normalised text (value: the text as written)."""
        out: dict[str, str] = {}
        for text in self.delegation.constraints:
            out.setdefault(norm_text(text), text)
        return out

    @cached_property
    def principals(self) -> frozenset[str]:
        """Keys of the principal this hop delegated to (its role and its delegated_to)."""
        return frozenset({principal_key(self.request.role), principal_key(self.delegation.delegated_to)})

    @cached_property
    def effective_expiry(self) -> datetime | None:
        given = self.delegation.expires_at
        if given is None or self.expires_at is None:
            return given or self.expires_at
        return min(given, self.expires_at)


@dataclass(frozen=True)
class DirectoryFacts:
    """What the engine found on disk for `project_directory` (the gate never looks itself).

    Build it with, for example::

        DirectoryFacts(path=p, exists=os.path.exists(p), is_dir=os.path.isdir(p),
                       real_path=os.path.realpath(p))
    """

    path: str
    exists: bool
    is_dir: bool
    real_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ContextError(f"DirectoryFacts.path must be a string (got {self.path!r})")
        if self.real_path is not None and not isinstance(self.real_path, str):
            raise ContextError(f"DirectoryFacts.real_path must be a string or None (got {self.real_path!r})")


@dataclass(frozen=True)
class ChainContext:
    """Everything the gate needs besides the request itself, resolved by the engine.

    - `parents`: the admitted hops above the new one, root first; empty for a root delegation.
      The new hop's depth (and its `hop` index in findings) is `len(parents)`.
    - `revoked_sessions`: sessions revoked in the ledger (REV-01 also honours `Hop.revoked`).
    - `directory`: facts about the request's `project_directory`; None = not resolved (DIR-01
      then warns, or refuses in the strict profile).
    - `known_roles`: the role catalogue; None = unavailable (ROLE-01 then warns, or refuses in the
      strict profile).
    - `ledger_head`: the ledger's head hash the facts were read at; copied into the verdict.
    """

    parents: tuple[Hop, ...] = ()
    revoked_sessions: frozenset[str] = frozenset()
    directory: DirectoryFacts | None = None
    known_roles: frozenset[str] | None = None
    ledger_head: str | None = None

    def __post_init__(self) -> None:
        # Accept any iterable for the collections (but not a lone string), store the immutable form.
        for name in ("revoked_sessions", "known_roles"):
            if isinstance(getattr(self, name), str):
                raise ContextError(f"ChainContext.{name} must be a collection of names, not a string")
        try:
            parents = tuple(self.parents)
            revoked = frozenset(self.revoked_sessions)
            roles = None if self.known_roles is None else frozenset(self.known_roles)
        except TypeError as exc:
            raise ContextError(f"ChainContext collections must be iterables: {exc}") from exc
        for index, hop in enumerate(parents):
            if not isinstance(hop, Hop):
                raise ContextError(f"ChainContext.parents[{index}] is not a Hop (got {type(hop).__name__})")
        if self.directory is not None and not isinstance(self.directory, DirectoryFacts):
            raise ContextError(
                f"ChainContext.directory must be DirectoryFacts or None (got {self.directory!r})"
            )
        if self.ledger_head is not None and not isinstance(self.ledger_head, str):
            raise ContextError(
                f"ChainContext.ledger_head must be a string or None (got {self.ledger_head!r})"
            )
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "revoked_sessions", revoked)
        object.__setattr__(self, "known_roles", roles)

    @property
    def depth(self) -> int:
        """The depth of the new hop (0 for a root delegation)."""
        return len(self.parents)

    @property
    def parent(self) -> Hop | None:
        return self.parents[-1] if self.parents else None

    @property
    def root(self) -> Hop | None:
        return self.parents[0] if self.parents else None

    @cached_property
    def inherited_constraints(self) -> dict[str, tuple[int, str]]:
        """Every constraint some ancestor carries: normalised text -> (first hop carrying it, text)."""
        out: dict[str, tuple[int, str]] = {}
        for index, hop in enumerate(self.parents):
            for key, text in hop.constraints.items():
                out.setdefault(key, (index, text))
        return out

    @cached_property
    def scope_reference(self) -> tuple[int, ScopeSet] | None:
        """The nearest ancestor with structured scopes: (its hop index, its compiled scopes)."""
        for index in range(len(self.parents) - 1, -1, -1):
            scopes = self.parents[index].scopes
            if scopes is not None:
                return index, scopes
        return None

    @property
    def root_origin_scopes(self) -> ScopeSet | None:
        """The root's `cap_origin.scopes`, compiled (None without parents or without scopes)."""
        root = self.root
        return None if root is None else root.origin_scopes

    @cached_property
    def budget_bounds(self) -> dict[str, tuple[int, float]]:
        """The tightest remaining budget above the new hop: "tokens"/"cost_usd" -> (hop index, remaining)."""
        out: dict[str, tuple[int, float]] = {}
        for index, hop in enumerate(self.parents):
            left = hop.budget_remaining
            if left is None:
                continue
            for name in ("tokens", "cost_usd"):
                value = getattr(left, name)
                if value is not None and (name not in out or value < out[name][1]):
                    out[name] = (index, value)
        return out

    def is_revoked(self, hop: Hop) -> bool:
        return hop.revoked or hop.session_id in self.revoked_sessions
