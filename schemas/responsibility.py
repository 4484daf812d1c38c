"""The three responsibility objects every delegation carries, with our optional extensions.

Field sets follow the ct_dev delegation server exactly (see shared/GATE_RULES.md, "Compatibility
first"); `scopes`, `expires_at`, `budget` and `granted_to` are ours and optional.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import Frozen, NonEmptyStr, Timestamp

#: `<resource>#<action>`: resource segments separated by "/" ("*" one segment, trailing "**"), or
#: `<kind>:**` (the whole of one kind, e.g. `repo:**`); action segments separated by "/". See
#: GATE_RULES.md, "Scope grammar", and docs/gate.md.
_SCOPE = re.compile(r"^[^#\s]+#[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*$")
_KIND_REST = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*:\*\*")
SCOPE_ERROR = "scope_syntax"


def _check_scope(value: str) -> str:
    return _checked_scope(value if type(value) is str else str(value))


@lru_cache(maxsize=4096)
def _checked_scope(value: str) -> str:
    """_check_scope, memoised (the same scopes recur down a chain)."""
    if not _SCOPE.match(value):
        raise PydanticCustomError(
            SCOPE_ERROR,
            "expected a scope '<resource>#<action>' such as 'repo:src/**#fs/write' (got '{got}')",
            {"got": value},
        )
    resource = value.split("#", 1)[0]
    segments = resource.split("/")
    if _KIND_REST.fullmatch(resource):
        return value
    if (
        any(seg == "" for seg in segments)
        or "**" in segments[:-1]
        or any("**" in seg and seg != "**" for seg in segments)
    ):
        raise PydanticCustomError(
            SCOPE_ERROR,
            "resource of scope '{got}' has an empty segment, or a '**' that is neither the whole last "
            "segment nor '<kind>:**'",
            {"got": value},
        )
    return value


Scope = Annotated[str, AfterValidator(_check_scope)]


class Budget(Frozen):
    """Token and cost ceilings of one delegation (each optional, at least one given)."""

    max_tokens: Annotated[int, Field(ge=1, le=2**53 - 1)] | None = None
    max_cost_usd: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.max_tokens is None and self.max_cost_usd is None:
            raise PydanticCustomError(
                "budget_empty", "a budget needs max_tokens or max_cost_usd (got an empty budget)"
            )
        return self


class OriginalTask(Frozen):
    """What was asked, and by whom."""

    task_id: NonEmptyStr
    title: NonEmptyStr
    description: NonEmptyStr
    requester: NonEmptyStr
    requested_at: Timestamp


class CapOrigin(Frozen):
    """The ultimate authority behind the work, and its scope."""

    ultimate_authority: NonEmptyStr
    original_scope: NonEmptyStr
    granted_at: Timestamp
    grant_context: NonEmptyStr
    scopes: list[Scope] | None = None
    granted_to: NonEmptyStr | None = None


class DelegationContext(Frozen):
    """Who delegates what to whom, under which constraints."""

    delegator: NonEmptyStr
    delegator_cap: NonEmptyStr
    delegated_to: NonEmptyStr
    delegated_cap: NonEmptyStr
    constraints: list[NonEmptyStr]
    phantom_level: NonEmptyStr
    delegated_at: Timestamp
    scopes: list[Scope] | None = None
    expires_at: Timestamp | None = None
    budget: Budget | None = None
