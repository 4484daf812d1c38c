"""Inputs of the MCP tools. `SpawnRequest` is ct_dev's SpawnDelegationRequest, flat, plus our options."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from schemas.base import Frozen, NonEmptyStr
from schemas.responsibility import CapOrigin, DelegationContext, OriginalTask


class SpawnRequest(Frozen):
    """A request to have `role` carry out `instructions` for `task_id` under a responsibility chain."""

    role: NonEmptyStr
    task_id: NonEmptyStr
    instructions: NonEmptyStr
    project_directory: NonEmptyStr
    expected_output: str | None = None
    context: dict[str, Any] | None = None
    model: str | None = None
    original_task: OriginalTask
    cap_origin: CapOrigin
    delegation_context: DelegationContext
    # ours, optional
    timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None
    title: str | None = None


#: Keys a spawn request may carry at the top level (SCH-01 refuses any other).
SPAWN_REQUEST_KEYS = frozenset(SpawnRequest.model_fields)
