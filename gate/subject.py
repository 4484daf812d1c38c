"""The thing the rules judge: a raw request read as far as it can be, plus the chain, the time and the policy.

Validation against `schemas.requests.SpawnRequest` happens once, here. Every pydantic error
becomes a finding (error type "rfc3339" -> SCH-02, anything else -> SCH-01), all at once. When the
request as a whole is invalid, each of its three responsibility objects and its top-level fields
is still read on its own, so that the other rules can judge whatever is intact; `valid` names the
parts that are, and a rule runs only when the parts it `needs` are valid.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from gate.constitution import Constitution, RolePolicy
from gate.context import ChainContext
from schemas.base import RFC3339_ERROR, format_rfc3339
from schemas.events import Finding, Severity
from schemas.requests import SpawnRequest
from schemas.responsibility import Budget, CapOrigin, DelegationContext, OriginalTask

__all__ = ["Subject", "jsonable"]

_SECTIONS: dict[str, type[BaseModel]] = {
    "original_task": OriginalTask,
    "cap_origin": CapOrigin,
    "delegation_context": DelegationContext,
}
_ATTRS = {"original_task": "task", "cap_origin": "origin", "delegation_context": "delegation"}
_TOP_LEVEL = ("role", "task_id", "instructions", "project_directory", "model")
_MODELS_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): SpawnRequest,
    **{(name,): model for name, model in _SECTIONS.items()},
    ("delegation_context", "budget"): Budget,
}
_ALL_VALID = frozenset({"request", "task", "origin", "delegation", *_TOP_LEVEL})
_TIMESTAMPS = frozenset({"requested_at", "granted_at", "delegated_at", "expires_at"})
_OBJECTS = frozenset({*_SECTIONS, "budget", "context"})
_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "bool_type": "true or false",
}
_LIMITS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
# Required free-text fields checked for being blank (whitespace only) beyond pydantic's min_length.
_TEXT_FIELDS = {
    "original_task": ("task_id", "title", "description", "requester"),
    "cap_origin": ("ultimate_authority", "original_scope", "grant_context", "granted_to"),
    "delegation_context": ("delegator", "delegator_cap", "delegated_to", "delegated_cap", "phantom_level"),
}
_MAX_TEXT = 200


class Subject:
    """A request under review. Rules read its validated parts; `None` means absent or invalid."""

    __slots__ = (
        "chain",
        "constitution",
        "delegation",
        "findings",
        "hop",
        "instructions",
        "model",
        "now",
        "origin",
        "policy",
        "project_directory",
        "raw",
        "request",
        "role",
        "strict",
        "task",
        "task_id",
        "valid",
    )

    def __init__(self, raw: Any, chain: ChainContext, now: datetime, constitution: Constitution) -> None:
        self.raw = raw
        self.chain = chain
        self.now = now
        self.constitution = constitution
        self.strict = constitution.strict
        self.hop = len(chain.parents)
        self.findings: list[Finding] = []  # schema findings (SCH-01 / SCH-02)
        self.request: SpawnRequest | None = None
        self.task: OriginalTask | None = None
        self.origin: CapOrigin | None = None
        self.delegation: DelegationContext | None = None
        self.role: str | None = None
        self.task_id: str | None = None
        self.instructions: str | None = None
        self.project_directory: str | None = None
        self.model: str | None = None
        self.valid: frozenset[str] = frozenset()
        try:
            self._read()
        except Exception as exc:  # fail closed on input nobody foresaw; never let it escape
            self.valid = frozenset()
            self.findings.append(
                self.finding(
                    "SCH-01",
                    "",
                    f"the request could not be read ({type(exc).__name__}: {exc}): refused",
                    actual=type(raw).__name__,
                )
            )
        self.policy: RolePolicy = constitution.policy(self.role)

    # ------------------------------------------------------------------------------ findings

    def finding(
        self,
        rule: str,
        path: str,
        message: str,
        *,
        expected: Any = None,
        actual: Any = None,
        hop: int | None = None,
        severity: Severity = "error",
    ) -> Finding:
        return Finding(
            rule=rule,
            severity=severity,
            hop=self.hop if hop is None else hop,
            path=path,
            message=message,
            expected=jsonable(expected),
            actual=jsonable(actual),
        )

    @property
    def soft(self) -> Severity:
        """The severity of a check that warns in the default profile and refuses in the strict one."""
        return "error" if self.strict else "warning"

    # ------------------------------------------------------------------------------ reading

    def _read(self) -> None:
        raw = self.raw
        if isinstance(raw, SpawnRequest):  # validated already (an audit re-run): judged as its raw form
            self._take(raw)
            self._check_blank()
            return
        if not isinstance(raw, Mapping):
            self.findings.append(
                self.finding(
                    "SCH-01",
                    "",
                    f"the request is not an object of spawn_agent arguments (got {type(raw).__name__})",
                    expected="an object",
                    actual=type(raw).__name__,
                )
            )
            return
        data = raw if isinstance(raw, dict) else dict(raw)
        try:
            request = SpawnRequest.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            self.findings.extend(self._schema_finding(error) for error in errors)
            self._read_parts(data, {error["loc"][0] for error in errors if error["loc"]})
        else:
            self._take(request)
        self._check_blank()

    def _take(self, request: SpawnRequest) -> None:
        self.request = request
        self.task, self.origin, self.delegation = (
            request.original_task,
            request.cap_origin,
            request.delegation_context,
        )
        self.role, self.task_id, self.instructions = request.role, request.task_id, request.instructions
        self.project_directory, self.model = request.project_directory, request.model
        self.valid = _ALL_VALID

    def _read_parts(self, data: dict[Any, Any], broken: set[Any]) -> None:
        valid = set()
        for name, model in _SECTIONS.items():
            if name in broken or not isinstance(data.get(name), Mapping):
                continue
            try:
                part = model.model_validate(data[name])
            except ValidationError:  # pragma: no cover - no error was located inside it
                continue
            setattr(self, _ATTRS[name], part)
            valid.add(_ATTRS[name])
        for name in _TOP_LEVEL:
            value = data.get(name)
            if name not in broken and (isinstance(value, str) or (name == "model" and value is None)):
                setattr(self, name, value)
                valid.add(name)
        self.valid = frozenset(valid)

    def _check_blank(self) -> None:
        """SCH-01 beyond pydantic: required text that is only whitespace, a budget that limits nothing."""
        for name in ("role", "task_id", "instructions", "project_directory"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                self.findings.append(self._blank(name, value))
        for section, fields in _TEXT_FIELDS.items():
            part = getattr(self, _ATTRS[section])
            if part is None:
                continue
            for field in fields:
                value = getattr(part, field)
                if value is not None and not value.strip():
                    self.findings.append(self._blank(f"{section}.{field}", value))
        if self.delegation is not None:
            for index, text in enumerate(self.delegation.constraints):
                if not text.strip():
                    self.findings.append(self._blank(f"delegation_context.constraints[{index}]", text))
            budget = self.delegation.budget
            if budget is not None and budget.max_tokens is None and budget.max_cost_usd is None:
                self.findings.append(
                    self.finding(
                        "SCH-01",
                        "delegation_context.budget",
                        "delegation_context.budget sets no limit (got {}): give max_tokens and/or "
                        "max_cost_usd, or leave budget out",
                        expected="max_tokens and/or max_cost_usd",
                        actual={},
                    )
                )

    def _blank(self, path: str, value: str) -> Finding:
        return self.finding(
            "SCH-01",
            path,
            f"{path} is blank (got {value!r}): it must hold text",
            expected="a non-blank string",
            actual=value,
        )

    def _schema_finding(self, error: Any) -> Finding:
        loc = tuple(error["loc"])
        path = dotted(loc)
        kind = error["type"]
        got = error.get("input")
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
        if kind == RFC3339_ERROR:
            ctx = error.get("ctx") or {}
            why = f": {ctx['reason']}" if "reason" in ctx else ""
            message = (
                f"{path} is not an RFC 3339 timestamp with a timezone (got {_show(got)}, expected a value "
                f"such as 2025-10-01T08:00:00Z){why}"
            )
            return self.finding("SCH-02", path, message, expected="e.g. 2025-10-01T08:00:00Z", actual=got)
        if kind == "missing":
            expected = _expected_kind(name)
            message = f"{path} is missing (expected {expected}): a spawn request must carry it"
            return self.finding("SCH-01", path, message, expected=expected, actual=None)
        if kind == "extra_forbidden":
            known = sorted(_MODELS_AT.get(tuple(str(p) for p in loc[:-1]), SpawnRequest).model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"
            message = f"{path} is not a known field (got {_show(got)}): unknown keys are refused{hint}"
            return self.finding("SCH-01", path, message, expected=known, actual=got)
        if kind == "invalid_key":
            message = f"{path} is not a valid key (got {_show(loc[-1])}): keys must be strings"
            return self.finding("SCH-01", path, message, expected="a string key", actual=str(loc[-1]))
        if kind == "string_too_short":
            message = f"{path} is empty (got {_show(got)}): it must be a non-empty string"
            return self.finding("SCH-01", path, message, expected="a non-empty string", actual=got)
        if kind in _TYPE_NAMES:
            expected = _TYPE_NAMES[kind]
            message = (
                f"{path} has the wrong type (got {type(got).__name__} {_show(got)}, expected {expected})"
            )
            return self.finding("SCH-01", path, message, expected=expected, actual=got)
        if kind in _LIMITS:
            limit = next(iter((error.get("ctx") or {"": "?"}).values()))
            expected = f"{_LIMITS[kind]} {limit}"
            message = f"{path} is out of range (got {_show(got)}, expected {expected})"
            return self.finding("SCH-01", path, message, expected=expected, actual=got)
        reason = _clean(error["msg"], error.get("ctx"))
        message = f"{path or 'the request'} is invalid (got {_show(got)}): {reason}"
        return self.finding("SCH-01", path, message, expected=None, actual=got)


def dotted(loc: tuple[Any, ...]) -> str:
    """('delegation_context', 'scopes', 2) -> 'delegation_context.scopes[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _expected_kind(name: str) -> str:
    if name in _TIMESTAMPS:
        return "an RFC 3339 timestamp with a timezone"
    if name in _OBJECTS:
        return "an object"
    if name == "constraints":
        return "a list of non-empty strings"
    return "a non-empty string"


def _clean(message: str, ctx: Any) -> str:
    """Fill a pydantic message template ("... (got {got!r})") that was left unformatted."""
    if isinstance(ctx, Mapping):
        for key, value in ctx.items():
            message = message.replace(f"{{{key}!r}}", repr(value)).replace(f"{{{key}}}", str(value))
    return message


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails must not break the verdict
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON value RFC 8785 can canonicalise, so that every verdict can be written to the ledger.

    Timestamps become RFC 3339 strings; long strings and large or deep containers are shortened;
    anything else (bytes, objects, non-finite floats, integers beyond 2**53) becomes its repr.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[: _MAX_TEXT - 3] + "..."
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, datetime):
        return format_rfc3339(value) if value.utcoffset() is not None else value.isoformat()
    if _depth < 3 and isinstance(value, list | tuple) and len(value) <= 50:
        return [jsonable(v, _depth + 1) for v in value]
    if _depth < 3 and isinstance(value, Mapping) and len(value) <= 50:
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | Mapping):
        return f"<{type(value).__name__} of {len(value)} items>"
    return _show(value)
