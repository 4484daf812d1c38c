"""From an event (a model, or a payload dict with a `type`) to the canonical bytes the ledger stores."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ledger.canonical import canonical_bytes
from ledger.errors import PayloadError
from schemas.events import parse_event_payload


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r:.80})")
    return "; ".join(parts)


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """(path, value) of the first NaN or infinite float inside a model or container, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "(payload)", value)
    if isinstance(value, BaseModel):
        items: Any = ((k, getattr(value, k)) for k in type(value).model_fields)
    elif isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def encode_event(event: BaseModel | Mapping[str, Any]) -> tuple[str, bytes, dict[str, Any]]:
    """(type, canonical bytes, JSON data) of an event model or a payload dict with a `type`."""
    if isinstance(event, BaseModel):
        model = event
    else:
        try:
            model = parse_event_payload(dict(event))
        except ValidationError as exc:
            raise PayloadError(
                f"invalid {event.get('type', 'event')!r} payload: {_describe_validation(exc)}"
            ) from exc
    # the models keep NaN/Infinity as floats when dumped (ser_json_inf_nan="constants"), so the
    # canonical encoder refuses them; the walk below only runs then, to name the field
    data = model.model_dump(mode="json")
    type_ = data.get("type")
    if not isinstance(type_, str) or not type_:
        raise PayloadError(f"payload has no 'type' (expected one of the event types, got {type_!r})")
    try:
        return type_, canonical_bytes(data), data
    except PayloadError:
        bad = _non_finite(model, "")
        if bad is not None:
            raise PayloadError(
                f"payload field {bad[0]} holds {bad[1]!r}, which JSON cannot represent"
            ) from None
        raise
