"""Shared model configuration and field types."""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

#: RFC 3339 date-time with a mandatory offset ("Z" or +hh:mm); fractional seconds optional.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$")

_NANOS = re.compile(r"^(.*?\.\d{6})\d+(.*)$")

#: pydantic error type used for SCH-02 (timestamp) failures, so the gate can tell them from SCH-01.
RFC3339_ERROR = "rfc3339"


def parse_rfc3339(value: Any) -> datetime:
    """Parse an RFC 3339 timestamp that carries a timezone; anything else is refused."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError(
                RFC3339_ERROR, "datetime has no timezone (got '{got}')", {"got": str(value)}
            )
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            RFC3339_ERROR,
            "expected an RFC 3339 timestamp with a timezone such as 2025-10-01T08:00:00Z (got '{got}')",
            {"got": value},
        )
    return _parse_text(value if type(value) is str else str(value))


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> datetime:
    """parse_rfc3339 of a string (memoised: a datetime is immutable, the same texts recur in requests)."""
    if not _RFC3339.match(value):
        raise PydanticCustomError(
            RFC3339_ERROR,
            "expected an RFC 3339 timestamp with a timezone such as 2025-10-01T08:00:00Z (got '{got}')",
            {"got": value},
        )
    text = value.replace("z", "Z").replace("t", "T")
    # Python 3.11 accepts at most 6 fractional digits: trim nanoseconds rather than refuse them.
    match = _NANOS.match(text)
    if match:
        text = match.group(1) + match.group(2)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:  # e.g. month 13
        raise PydanticCustomError(
            RFC3339_ERROR, "not a valid date-time: {reason} (got '{got}')", {"reason": str(exc), "got": value}
        ) from exc


def format_rfc3339(value: datetime) -> str:
    """Render a timestamp in UTC as RFC 3339 with a Z suffix (microsecond precision when needed)."""
    from datetime import UTC

    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


Timestamp = Annotated[
    datetime, BeforeValidator(parse_rfc3339), PlainSerializer(format_rfc3339, return_type=str)
]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError(
            "blank", "must not be empty or only whitespace (got {got})", {"got": repr(value)}
        )
    return value


#: at least one character that is not whitespace (a blank name is as missing as an empty one)
NonEmptyStr = Annotated[
    str, StringConstraints(min_length=1, strip_whitespace=False), AfterValidator(_not_blank)
]


class Frozen(BaseModel):
    """Base of every payload model: immutable, unknown keys refused."""

    # NaN/Infinity are kept as floats when dumped, so the ledger refuses them instead of silently
    # writing null (pydantic's default)
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=False, ser_json_inf_nan="constants"
    )


class Open(BaseModel):
    """Base of models that carry free-form data from outside (kept as given)."""

    model_config = ConfigDict(frozen=True, extra="allow", ser_json_inf_nan="constants")
