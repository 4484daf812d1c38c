"""The pure fold from events to projections: sessions, the delegation tree, budgets, revocations.

The same `Projector.apply` runs on the live append path (inside the append transaction) and in
replay, so a rebuild can be compared with the stored projections. States are plain dicts shaped
like `schemas.state.SessionState`; `SessionStore` is whatever holds them (a dict in replay, a
cache over the `sessions` table when appending).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ledger.entry import iso_us
from schemas.events import TERMINAL_STATUSES
from schemas.state import SessionState

#: Event types that change a projection. Others are recorded but not folded.
PROJECTED_TYPES: frozenset[str] = frozenset(
    {
        "agent.spawned",
        "message.sent",
        "tool.called",
        "permission.decided",
        "output.received",
        "agent.completed",
        "agent.stopped",
        "agent.failed",
        "session.interrupted",
        "session.adopted",
        "delegation.revoked",
        "budget.exceeded",
        "ledger.pruned",
        "gate.decided",
    }
)

#: Event types a projection only counts: folding one changes its session's counters and `updated_at`,
#: nothing else (tests hold `Projector` to it). A reader that needs no counts may skip them.
COUNTED_TYPES: frozenset[str] = frozenset({"message.sent", "tool.called", "permission.decided"})
#: what folding a COUNTED_TYPES event may change
COUNTERS: tuple[str, ...] = (
    "messages",
    "tool_calls",
    "permissions_decided",
    "permissions_rejected",
    "updated_at",
)

_TERMINAL_BY_TYPE = {
    "agent.completed": "completed",
    "agent.stopped": "stopped",
    "agent.failed": "failed",
    "session.interrupted": "interrupted",
}
_DEFAULTS = SessionState(session_id="", task_id="", role="", root_session_id="").model_dump()


class SessionStore(Protocol):
    def get(self, session_id: str) -> dict[str, Any] | None: ...
    def put(self, state: dict[str, Any]) -> None: ...


class DictSessions(dict[str, dict[str, Any]]):
    """A SessionStore over a plain dict (replay, tests); `updated` remembers each session's last seq."""

    seq = 0

    def __init__(self) -> None:
        super().__init__()
        self.updated: dict[str, int] = {}

    def put(self, state: dict[str, Any]) -> None:
        self[state["session_id"]] = state
        self.updated[state["session_id"]] = self.seq


class Projector:
    """Folds one event at a time into a SessionStore."""

    def __init__(self) -> None:
        self._last_us = -1
        self._last_iso = ""

    def _when(self, recorded_at_us: int) -> str:
        if recorded_at_us != self._last_us:  # a whole batch shares one timestamp
            self._last_us, self._last_iso = recorded_at_us, iso_us(recorded_at_us)
        return self._last_iso

    def apply(
        self, store: SessionStore, stream: str, type_: str, data: dict[str, Any] | None, recorded_at_us: int
    ) -> None:
        if data is None or type_ not in PROJECTED_TYPES:
            return  # pruned payloads are restored by the ledger.pruned snapshot that follows them
        if type_ == "ledger.pruned":
            for snap in data["sessions"]:
                state = dict(snap["state"])
                state["children"] = list(state.get("children") or [])  # owned: folds mutate in place
                store.put(state)
            return
        when = self._when(recorded_at_us)
        if type_ == "gate.decided":
            self._decided(store, stream, data, when)
            return
        if type_ == "agent.spawned":
            self._spawned(store, data, when)
            return
        state = store.get(data["session_id"])
        if state is None:
            return  # an event for a session whose spawn was pruned and not yet restored
        # states are mutated in place (every store owns its dicts; each change is followed by put())
        state["updated_at"] = when
        if type_ == "output.received":
            tokens = data.get("tokens") or {}
            used = (
                int(tokens.get("input", 0)) + int(tokens.get("output", 0)) + int(tokens.get("reasoning", 0))
            )
            cost = float(data.get("cost_usd", 0.0))
            state["tokens_used"] += used
            state["cost_usd"] += cost
            state["last_output"] = data.get("text", "")[:4000]
            self._roll_up(store, state, used, cost)
        elif type_ == "message.sent":
            state["messages"] += 1
        elif type_ == "session.adopted":
            state["engine"] = data["engine"]
        elif type_ == "tool.called":
            state["tool_calls"] += 1
        elif type_ == "permission.decided":
            state["permissions_decided"] += 1
            if data.get("reply") == "reject":
                state["permissions_rejected"] += 1
        elif type_ == "budget.exceeded":
            # float(): the live fold sees 150.0 where replay reads the canonical bytes' 150 (JCS drops ".0")
            state["end_reason"] = (
                f"budget exceeded: {data['limit']} used {float(data['used'])!r} of {float(data['allowed'])!r}"
            )
        elif type_ == "delegation.revoked":
            for sid in [data["session_id"], *data.get("subtree", [])]:
                target = state if sid == state["session_id"] else store.get(sid)
                if target is None:
                    continue
                target["revoked"] = True
                target["updated_at"] = when
                if target["status"] not in TERMINAL_STATUSES:
                    target["status"] = "revoked"
                    target["ended_at"] = when
                    target["end_reason"] = f"revoked by {data['by']}: {data['reason']}"
                if sid == state["session_id"]:
                    state = target
                else:
                    store.put(target)
        elif type_ in _TERMINAL_BY_TYPE and state["status"] not in TERMINAL_STATUSES:
            state["status"] = _TERMINAL_BY_TYPE[type_]
            state["ended_at"] = when
            reason = data.get("summary") or data.get("reason") or data.get("error")
            if reason is not None:
                state["end_reason"] = str(reason)[:4000]
        store.put(state)

    @staticmethod
    def _decided(store: SessionStore, stream: str, data: dict[str, Any], when: str) -> None:
        """An approved delegation becomes a queued session under its stream id; a refusal leaves none."""
        if data["verdict"]["decision"] != "approved" or store.get(stream) is not None:
            return
        state = dict(_DEFAULTS)
        state.update(
            session_id=stream,
            task_id=data.get("task_id") or "",
            role=data.get("role") or "",
            parent_session_id=data.get("parent_session_id"),
            root_session_id=stream,
            depth=data.get("depth", 0),
            status="queued",
            created_at=when,
            updated_at=when,
            children=[],
            engine=data.get("engine"),
        )
        if data.get("parent_session_id"):
            parent = store.get(data["parent_session_id"])
            if parent is not None:
                state["root_session_id"] = parent["root_session_id"]
        store.put(state)

    @staticmethod
    def _spawned(store: SessionStore, data: dict[str, Any], when: str) -> None:
        existing = store.get(data["session_id"])
        state = existing if existing is not None else dict(_DEFAULTS, children=[])
        for key in (
            "session_id",
            "task_id",
            "role",
            "parent_session_id",
            "root_session_id",
            "depth",
            "principal",
            "delegator",
            "opencode_session_id",
            "server_url",
            "pid",
            "max_tokens",
            "max_cost_usd",
        ):
            if data.get(key) is not None:
                state[key] = data[key]
        if state["status"] in ("queued", "starting"):
            state["status"] = "running"
        state["updated_at"] = when
        state["created_at"] = state.get("created_at") or when
        store.put(state)
        parent_id = data.get("parent_session_id")
        parent = store.get(parent_id) if parent_id else None
        if parent is not None and data["session_id"] not in parent["children"]:
            parent["children"].append(data["session_id"])
            store.put(parent)

    @staticmethod
    def _roll_up(store: SessionStore, state: dict[str, Any], tokens: int, cost: float) -> None:
        state["subtree_tokens"] += tokens
        state["subtree_cost_usd"] += cost
        seen = {state["session_id"]}
        parent_id = state.get("parent_session_id")
        while parent_id and parent_id not in seen:
            seen.add(parent_id)
            parent = store.get(parent_id)
            if parent is None:
                return
            parent["subtree_tokens"] += tokens
            parent["subtree_cost_usd"] += cost
            store.put(parent)
            parent_id = parent.get("parent_session_id")


def fold(events: Iterable[tuple[str, str, dict[str, Any] | None, int]]) -> DictSessions:
    """Fold (stream, type, data, recorded_at_us) tuples into a fresh DictSessions."""
    store = DictSessions()
    projector = Projector()
    for stream, type_, data, recorded_at_us in events:
        projector.apply(store, stream, type_, data, recorded_at_us)
    return store
