"""Pydantic models of every payload and event of delegation-ledger.

`schemas` imports nothing of the project: `gate`, `ledger`, `engine` and `cli` import it.
"""

from schemas.base import format_rfc3339, parse_rfc3339
from schemas.events import EVENT_MODELS, EVENT_TYPES, Event, event_model, parse_event_payload
from schemas.requests import SpawnRequest
from schemas.responsibility import (
    Budget,
    CapOrigin,
    DelegationContext,
    OriginalTask,
    Scope,
)

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "Budget",
    "CapOrigin",
    "DelegationContext",
    "Event",
    "OriginalTask",
    "Scope",
    "SpawnRequest",
    "event_model",
    "format_rfc3339",
    "parse_event_payload",
    "parse_rfc3339",
]
