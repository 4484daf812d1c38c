"""OpenCode's events mapped to the engine's, and the backlog a re-attached engine catches up from:
snapshots shaped as OpenCode 1.18.33 returns them (``GET /session/{id}/message``, ``GET /permission``).
"""

from __future__ import annotations

from typing import Any

from engine.backend import Failure, Idle, Output, PermissionAsk, ToolUse
from engine.opencode_client import OpenCodeEvent
from engine.opencode_events import EventMapper, backlog

SID = "ses_1"


def user(mid: str, text: str) -> dict[str, Any]:
    return {
        "info": {"id": mid, "sessionID": SID, "role": "user", "time": {"created": 1}},
        "parts": [{"id": f"{mid}-t", "sessionID": SID, "messageID": mid, "type": "text", "text": text}],
    }


def assistant(
    mid: str, *, text: str = "", call: str | None = None, done: bool = True, error: Any = None
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"id": f"{mid}-s", "sessionID": SID, "messageID": mid, "type": "step-start"}
    ]
    if call is not None:
        parts.append(
            {
                "id": f"{mid}-c",
                "sessionID": SID,
                "messageID": mid,
                "type": "tool",
                "callID": call,
                "tool": "bash",
                "state": {"status": "completed", "input": {"command": "true"}, "output": "ok"},
            }
        )
    if text:
        parts.append({"id": f"{mid}-t", "sessionID": SID, "messageID": mid, "type": "text", "text": text})
    if done:
        parts.append({"id": f"{mid}-f", "sessionID": SID, "messageID": mid, "type": "step-finish"})
    info: dict[str, Any] = {
        "id": mid,
        "sessionID": SID,
        "role": "assistant",
        "time": {"created": 2, **({"completed": 3} if done else {})},
        "tokens": {"input": 10, "output": 5, "reasoning": 0, "cache": {"read": 0, "write": 0}},
        "cost": 0.001,
    }
    if error is not None:
        info["error"] = error
    return {"info": info, "parts": parts}


def mapped(mapper: EventMapper, events: list[OpenCodeEvent]) -> list[Any]:
    return [out for ev in events for out in mapper.map(ev)]


class TestBacklog:
    def test_a_turn_that_ended_unwatched_is_reported_then_ends(self) -> None:
        history = [user("m1", "do it"), assistant("m2", call="c1"), assistant("m3", text="all done")]
        out = mapped(EventMapper(SID), backlog(SID, history, busy=False, permissions=[]))
        assert [type(x) for x in out] == [ToolUse, Output, Output, Idle]
        assert out[0].call_id == "c1"
        assert out[2].text == "all done"
        assert out[2].tokens.total == 15

    def test_what_was_recorded_already_is_not_reported_again(self) -> None:
        history = [user("m1", "do it"), assistant("m2", call="c1"), assistant("m3", text="all done")]
        mapper = EventMapper(SID)
        mapper.seen(calls=["c1"], messages=["m2"])
        out = mapped(mapper, backlog(SID, history, busy=False, permissions=[]))
        assert [type(x) for x in out] == [Output, Idle]
        assert out[0].message_id == "m3"

    def test_a_busy_session_goes_on_with_its_live_events_without_repeats(self) -> None:
        history = [user("m1", "do it"), assistant("m2", call="c1", done=False)]
        mapper = EventMapper(SID)
        out = mapped(mapper, backlog(SID, history, busy=True, permissions=[]))
        assert [type(x) for x in out] == [ToolUse]  # no end: the turn is still running
        live = assistant("m2", call="c1", text="finished")
        events = [OpenCodeEvent("message.part.updated", {"part": p}) for p in live["parts"]]
        events += [
            OpenCodeEvent("message.updated", {"info": live["info"]}),
            OpenCodeEvent("session.idle", {"sessionID": SID}),
        ]
        out = mapped(mapper, events)
        assert [type(x) for x in out] == [Output, Idle]  # the call c1 is not reported twice
        assert out[0].text == "finished"

    def test_a_turn_that_failed_unwatched_ends_as_a_failure(self) -> None:
        err = {"name": "APIError", "data": {"message": "model unreachable"}}
        history = [user("m1", "do it"), assistant("m2", done=False, error=err)]
        out = mapped(EventMapper(SID), backlog(SID, history, busy=False, permissions=[]))
        assert isinstance(out[-1], Failure)
        assert "model unreachable" in out[-1].message
        assert out[-1].aborted is False

    def test_an_aborted_turn_is_reported_as_aborted(self) -> None:
        err = {"name": "MessageAbortedError", "data": {"message": "aborted"}}
        history = [user("m1", "do it"), assistant("m2", done=False, error=err)]
        out = mapped(EventMapper(SID), backlog(SID, history, busy=False, permissions=[]))
        assert isinstance(out[-1], Failure)
        assert out[-1].aborted is True

    def test_an_idle_session_that_never_answered_is_a_failure_not_a_completion(self) -> None:
        out = mapped(EventMapper(SID), backlog(SID, [user("m1", "do it")], busy=False, permissions=[]))
        assert [type(x) for x in out] == [Failure]
        assert "never answered" in out[0].message

    def test_a_pending_question_is_asked_once_and_only_for_this_session(self) -> None:
        question = {"id": "per_1", "sessionID": SID, "permission": "bash", "patterns": ["rm *"]}
        other = {"id": "per_2", "sessionID": "ses_other", "permission": "edit", "patterns": ["*"]}
        mapper = EventMapper(SID)
        out = mapped(mapper, backlog(SID, [user("m1", "x")], busy=True, permissions=[question, other]))
        assert out == [PermissionAsk(id="per_1", permission="bash", patterns=["rm *"])]
        assert mapped(mapper, [OpenCodeEvent("permission.asked", question)]) == []  # the live copy
