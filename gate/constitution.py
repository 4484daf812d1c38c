"""The constitution: the operator's policy file, its loader, and the hash every verdict records.

Format (TOML; every key optional, unknown keys refused)::

    profile = "default"            # or "strict"
    max_depth = 3                  # deepest hop index allowed (root = 0), 0..10
    clock_skew_seconds = 60        # tolerance for timestamps ahead of `now`
    max_ttl_seconds = 86400        # cap on expires_at - now (checked whenever expires_at is given)
    allowed_roots = ["/srv/work"]  # absolute folders project_directory must resolve into
    allowed_models = []            # empty = any model; entries may use * and ? (fnmatch)

    [default_budget]               # stands in for a missing delegation_context.budget (strict)
    max_tokens = 200000
    max_cost_usd = 5.0

    [roles.backend_specialist]     # per-role overrides: each replaces the global value
    max_depth = 2
    allowed_models = ["claude-sonnet-*"]
    max_tokens = 100000            # ceilings on the budget a delegation to this role may carry
    max_cost_usd = 2.0
    max_ttl_seconds = 3600

`Constitution.ruleset_hash` is "sha256:" + the hex SHA-256 of the RFC 8785 canonical JSON of the
normalised constitution together with `RULES_VERSION`, so an audit can tell under which rules (and
which version of their code) a decision was taken. Where the text came from is not hashed.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os.path
import re
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import rfc8785
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from gate.errors import ConstitutionError, ConstitutionProblem

__all__ = [
    "RULES_VERSION",
    "BudgetLimit",
    "Constitution",
    "RoleOverride",
    "RolePolicy",
    "default_constitution",
    "load_constitution",
]

#: Bumped whenever a rule's meaning changes; part of every ruleset hash. 2: `<kind>:**` scopes (ATT-01,
#: SCH-01), refused as malformed under 1.
RULES_VERSION = "delegation-ledger.gate.rules/2"

#: ZCAP-LD's advice: a delegation chain SHOULD NOT be longer than 10.
MAX_DEPTH_LIMIT = 10

Profile = Literal["default", "strict"]


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _names(value: Any) -> Any:
    value = _list_to_tuple(value)
    if isinstance(value, tuple):
        return tuple(sorted(set(value), key=str)) if all(isinstance(v, str) for v in value) else value
    return value


Depth = Annotated[int, Field(ge=0, le=MAX_DEPTH_LIMIT)]
Tokens = Annotated[int, Field(ge=1, le=2**53 - 1)]
Cost = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]
Seconds = Annotated[int, Field(ge=1, le=10 * 365 * 86_400)]
Names = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], BeforeValidator(_names)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class BudgetLimit(_Strict):
    """A token and cost ceiling (each optional)."""

    max_tokens: Tokens | None = None
    max_cost_usd: Cost | None = None


class RoleOverride(_Strict):
    """Overrides for delegations to one role; a None field keeps the global value."""

    max_depth: Depth | None = None
    allowed_models: Names | None = None
    max_tokens: Tokens | None = None
    max_cost_usd: Cost | None = None
    max_ttl_seconds: Seconds | None = None


@dataclass(frozen=True)
class RolePolicy:
    """The limits that apply to a delegation to one role: the global values with its overrides applied."""

    role: str | None
    max_depth: int
    allowed_models: tuple[str, ...]
    max_tokens: int | None
    max_cost_usd: float | None
    max_ttl_seconds: int
    overridden: frozenset[str]

    def source(self, field: str) -> str:
        """Where a limit comes from, for messages: `[roles.X] max_depth` or `max_depth`."""
        return f"[roles.{self.role}] {field}" if field in self.overridden else field


class Constitution(_Strict):
    """The operator's policy, validated and normalised (roots normalised, lists sorted and deduplicated)."""

    profile: Profile = "default"
    max_depth: Depth = 3
    clock_skew_seconds: Annotated[int, Field(ge=0, le=3600)] = 60
    max_ttl_seconds: Seconds = 86_400
    allowed_roots: Annotated[tuple[str, ...], BeforeValidator(_list_to_tuple)] = ()
    allowed_models: Names = ()
    default_budget: BudgetLimit | None = None
    roles: dict[Annotated[str, Field(min_length=1)], RoleOverride] = {}

    _ruleset_hash: str = PrivateAttr(default="")
    _policies: dict[str | None, RolePolicy] = PrivateAttr(default_factory=dict)

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, roots: tuple[str, ...]) -> tuple[str, ...]:
        for root in roots:
            if not root or not os.path.isabs(root):
                raise ValueError(f"allowed_roots entries must be absolute paths (got {root!r})")
        return tuple(sorted({os.path.normpath(root) for root in roots}))

    def model_post_init(self, context: Any, /) -> None:
        document = {"rules_version": RULES_VERSION, **self.model_dump(mode="json")}
        self._ruleset_hash = "sha256:" + hashlib.sha256(rfc8785.dumps(document)).hexdigest()

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Constitution:
        """A validated copy (so the ruleset hash always matches the fields)."""
        return type(self).model_validate({**self.model_dump(), **(update or {})})

    @property
    def ruleset_hash(self) -> str:
        return self._ruleset_hash

    @property
    def strict(self) -> bool:
        return self.profile == "strict"

    def policy(self, role: str | None) -> RolePolicy:
        """The limits for a delegation to `role` (None: the global ones)."""
        cached = self._policies.get(role)
        if cached is not None:
            return cached
        override = self.roles.get(role) if role is not None else None
        values: dict[str, Any] = {
            "max_depth": self.max_depth,
            "allowed_models": self.allowed_models,
            "max_tokens": None,
            "max_cost_usd": None,
            "max_ttl_seconds": self.max_ttl_seconds,
        }
        overridden = set()
        if override is not None:
            for name in values:
                value = getattr(override, name)
                if value is not None:
                    values[name] = value
                    overridden.add(name)
        policy = RolePolicy(role=role, overridden=frozenset(overridden), **values)
        self._policies[role] = policy
        return policy


def default_constitution() -> Constitution:
    """The built-in policy: default profile, max_depth 3, 60 s skew, no allowed roots (DIR-01 refuses all)."""
    return Constitution()


# --------------------------------------------------------------------------------------------- loading

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_\-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_HEADER = re.compile(rf"^\s*\[\[?\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*\]\]?")
_PART = re.compile(_BARE_OR_QUOTED)

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}


def load_constitution(text: str, source: str = "<constitution>") -> Constitution:
    """Parse and validate constitution TOML; ConstitutionError names the source, line and reason."""
    if not isinstance(text, str):
        raise TypeError(f"load_constitution() takes the file's text as str (got {type(text).__name__})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConstitutionError(source, [_decode_problem(exc, text)], text) from exc
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = [_problem(error, lines) for error in exc.errors()]
        raise ConstitutionError(source, problems, text) from exc


def _decode_problem(exc: tomllib.TOMLDecodeError, text: str) -> ConstitutionProblem:
    message = str(exc)
    match = _TOML_POSITION.search(message)
    if match:
        reason = message[: match.start()]
        return ConstitutionProblem(
            line=int(match.group(1)), column=int(match.group(2)), reason=_toml_reason(reason)
        )
    match = _TOML_END.search(message)
    reason = message[: match.start()] if match else message
    return ConstitutionProblem(
        line=max(1, len(text.splitlines())), reason=_toml_reason(reason) + " at end of file"
    )


def _toml_reason(reason: str) -> str:
    return f"not valid TOML: {reason[:1].lower()}{reason[1:]}"


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _PART.findall(text))


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every dotted key (and table) defined in `text` to the line that defines it (first wins)."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            for i in range(1, len(table) + 1):
                found.setdefault(table[:i], number)
            continue
        key = _KEY.match(line)
        if not key:
            continue
        full = table + _split_key(key.group(1))
        for i in range(len(table) + 1, len(full) + 1):
            found.setdefault(full[:i], number)
        remainder = line[key.end() :]
        if remainder.lstrip().startswith("{"):  # inline table: its keys live on this line
            for inner in re.finditer(rf"({_BARE_OR_QUOTED})\s*=", remainder):
                found.setdefault((*full, *_split_key(inner.group(1))), number)
    return found


def _line_of(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    """The keys allowed in the table at `loc` (the path of the table, not of the key)."""
    model: type[BaseModel] = Constitution
    rest = list(loc)
    while rest:
        name = rest.pop(0)
        if model is Constitution and name == "roles":
            if not rest:
                return []
            rest.pop(0)
            model = RoleOverride
        elif model is Constitution and name == "default_budget":
            model = BudgetLimit
        else:
            return []
    return sorted(model.model_fields)


def _problem(error: Any, lines: dict[tuple[str, ...], int]) -> ConstitutionProblem:
    loc = tuple(str(part) for part in error["loc"])
    keys = tuple(str(part) for part in error["loc"] if not isinstance(part, int))
    dotted = ".".join(keys) if keys else "the file"
    index = next((f"[{part}]" for part in error["loc"] if isinstance(part, int)), "")
    kind = error["type"]
    got = error.get("input")
    line = _line_of(keys, lines)
    if kind == "extra_forbidden":
        table, key = keys[:-1], keys[-1]
        known = _known_keys(table)
        where = f" in [{'.'.join(table)}]" if table else " at the top level"
        hint = difflib.get_close_matches(key, known, n=1)
        reason = f"unknown key {key!r}{where} (known: {', '.join(known)})"
        if hint:
            reason += f"; did you mean {hint[0]!r}?"
    elif kind in _EXPECTED:
        reason = f"{dotted}{index} must be {_EXPECTED[kind]} (got {_show(got)})"
    elif kind == "literal_error":
        reason = f"{dotted} must be one of {error['ctx']['expected']} (got {_show(got)})"
    elif kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        bound = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        limit = next(iter(error["ctx"].values()))
        reason = f"{dotted}{index} must be {bound} {limit} (got {_show(got)})"
        if keys and keys[-1] == "max_depth" and kind == "less_than_equal":
            reason += "; ZCAP-LD advises chains of at most 10 hops"
    elif kind == "string_too_short":
        reason = f"{dotted}{index} must not be empty"
    elif kind == "value_error":
        reason = f"{dotted}: {error['ctx']['error']}"
    else:
        reason = f"{dotted}{index}: {error['msg']} (got {_show(got)})"
    return ConstitutionProblem(line=line, reason=reason, key=".".join(loc) or None)


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
