"""Rules that judge the request on its own: SCH-01, SCH-02, ID-01..ID-04, TIME-01, TIME-02."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from gate import evaluate
from gate.subject import dotted
from schemas.events import Verdict
from tests.gate.gate_builders import NOW, context, findings, violated, virtual_constitution, virtual_request


def judge(request: Any) -> Verdict:
    return evaluate(request, context(), NOW, virtual_constitution())


@pytest.fixture
def request_() -> dict[str, Any]:
    return virtual_request()


class TestSch01Shape:
    def test_complete_request_passes(self, request_: dict[str, Any]) -> None:
        """The fixture's shape is accepted: no SCH-01 finding."""
        assert findings(judge(request_), "SCH-01") == []

    def test_misspelt_key_is_refused_and_named(self, request_: dict[str, Any]) -> None:
        """`delegated_too` does not pass silently: SCH-01 names the unknown key and the missing one."""
        ctx = request_["delegation_context"]
        ctx["delegated_too"] = ctx.pop("delegated_to")
        verdict = judge(request_)
        assert verdict.decision == "rejected"
        assert ("SCH-01", "delegation_context.delegated_too") in violated(verdict)
        assert ("SCH-01", "delegation_context.delegated_to") in violated(verdict)
        (unknown,) = [f for f in verdict.violations if f.path == "delegation_context.delegated_too"]
        assert "did you mean 'delegated_to'?" in unknown.message

    def test_unknown_top_level_key_is_refused(self, request_: dict[str, Any]) -> None:
        """Unknown keys at the top level are refused too."""
        request_["rolee"] = "tester"
        assert ("SCH-01", "rolee") in violated(judge(request_))

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("task_id",), 42),
            (("original_task", "title"), ["a"]),
            (("delegation_context", "constraints"), "Use Serena tools only"),
            (("delegation_context", "constraints", 0), 3),
            (("cap_origin",), "everything"),
            (("delegation_context", "budget"), {"max_tokens": "lots"}),
        ],
    )
    def test_wrong_types_are_refused(
        self, request_: dict[str, Any], path: tuple[Any, ...], value: Any
    ) -> None:
        """A value of the wrong type is an SCH-01 violation at its dotted path."""
        target = request_
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        verdict = judge(request_)
        expected = dotted(path)
        paths = {f.path for f in findings(verdict, "SCH-01")}
        assert any(p == expected or p.startswith(expected) for p in paths), paths

    @pytest.mark.parametrize("field", ["role", "instructions", "project_directory"])
    def test_missing_and_empty_fields_are_refused(self, request_: dict[str, Any], field: str) -> None:
        """A required field that is absent, empty or blank is refused."""
        del request_[field]
        assert ("SCH-01", field) in violated(judge(request_))
        request_[field] = ""
        assert ("SCH-01", field) in violated(judge(request_))
        request_[field] = "   "
        assert ("SCH-01", field) in violated(judge(request_))

    def test_blank_constraint_and_empty_budget_are_refused(self, request_: dict[str, Any]) -> None:
        """Whitespace-only constraints and a budget with no limit are shape errors."""
        request_["delegation_context"]["constraints"].append("  ")
        request_["delegation_context"]["budget"] = {}
        verdict = judge(request_)
        assert ("SCH-01", "delegation_context.constraints[2]") in violated(verdict)
        assert ("SCH-01", "delegation_context.budget") in violated(verdict)

    @pytest.mark.parametrize("raw", [None, [], "spawn", 3, {"role": None}, {1: "x"}])
    def test_non_objects_and_empty_objects_yield_a_verdict(self, raw: Any) -> None:
        """Anything at all returns a rejected Verdict, never an exception."""
        verdict = judge(raw)
        assert verdict.decision == "rejected"
        assert findings(verdict, "SCH-01")

    def test_invalid_scope_syntax_is_refused(self, request_: dict[str, Any]) -> None:
        """A scope outside the grammar is an SCH-01 violation at its index."""
        request_["delegation_context"]["scopes"] = [
            "repo:src/**#fs/write",
            "repo:**/x#fs",
            "no-action",
            "repo:**#fs",
            "1repo:**#fs",
            "repo:src**#fs",
        ]
        verdict = judge(request_)
        assert {path for rule, path in violated(verdict) if rule == "SCH-01"} == {
            "delegation_context.scopes[1]",
            "delegation_context.scopes[2]",
            "delegation_context.scopes[4]",
            "delegation_context.scopes[5]",
        }

    def test_intact_parts_are_still_judged(self, request_: dict[str, Any]) -> None:
        """A broken delegation_context does not hide a requester mismatch in the intact parts."""
        request_["delegation_context"]["delegated_too"] = "x"
        request_["original_task"]["requester"] = "Mallory"
        rules = {f.rule for f in judge(request_).violations}
        assert {"SCH-01", "ID-01"} <= rules


class TestSch02Timestamps:
    def test_offsets_are_accepted(self, request_: dict[str, Any]) -> None:
        """RFC 3339 timestamps with any offset (or fractional seconds) pass."""
        request_["original_task"]["requested_at"] = "2025-10-01T10:00:00.123+02:00"
        assert findings(judge(request_), "SCH-02") == []

    @pytest.mark.parametrize(
        "value", ["2025-10-01T08:00:00", "2025-10-01 08:00", "yesterday", "2025-13-01T08:00:00Z"]
    )
    def test_timestamps_without_zone_or_invalid_are_refused(
        self, request_: dict[str, Any], value: str
    ) -> None:
        """A timestamp without a timezone, or not a date at all, is SCH-02 at its path."""
        request_["original_task"]["requested_at"] = value
        verdict = judge(request_)
        assert ("SCH-02", "original_task.requested_at") in violated(verdict)
        assert value in verdict.violations[0].message

    def test_every_bad_timestamp_is_reported(self, request_: dict[str, Any]) -> None:
        """Several bad timestamps give several SCH-02 findings at once."""
        request_["cap_origin"]["granted_at"] = "soon"
        request_["delegation_context"]["delegated_at"] = "later"
        request_["delegation_context"]["expires_at"] = "never"
        assert {f.path for f in findings(judge(request_), "SCH-02")} == {
            "cap_origin.granted_at",
            "delegation_context.delegated_at",
            "delegation_context.expires_at",
        }


class TestIdentity:
    def test_id01_requester_must_be_the_authority(self, request_: dict[str, Any]) -> None:
        """ID-01 refuses a task requested by someone other than the ultimate authority."""
        assert findings(judge(request_), "ID-01") == []
        request_["original_task"]["requester"] = "Mallory"
        assert violated(judge(request_)) == {("ID-01", "original_task.requester")}

    def test_id02_task_ids_must_agree(self, request_: dict[str, Any]) -> None:
        """ID-02 refuses a request whose task_id is not original_task.task_id."""
        assert findings(judge(request_), "ID-02") == []
        request_["task_id"] = "another-task"
        verdict = judge(request_)
        assert violated(verdict) == {("ID-02", "task_id")}
        assert verdict.violations[0].expected == request_["original_task"]["task_id"]

    def test_id03_delegated_to_is_the_role(self, request_: dict[str, Any]) -> None:
        """ID-03 refuses a capability delegated to someone other than the spawned role."""
        request_["delegation_context"]["delegated_to"] = (
            "Backend Specialist"  # same principal, other spelling
        )
        assert findings(judge(request_), "ID-03") == []
        request_["delegation_context"]["delegated_to"] = "frontend_specialist"
        assert violated(judge(request_)) == {("ID-03", "delegation_context.delegated_to")}

    def test_id04_no_self_delegation(self, request_: dict[str, Any]) -> None:
        """ID-04 refuses an agent delegating to itself (compared as principals)."""
        assert findings(judge(request_), "ID-04") == []
        request_["delegation_context"]["delegator"] = "Backend-Specialist"
        verdict = judge(request_)
        assert violated(verdict) == {("ID-04", "delegation_context.delegated_to")}
        assert "cannot delegate to itself" in verdict.violations[0].message


class TestTime01Order:
    def test_ordered_timestamps_pass(self, request_: dict[str, Any]) -> None:
        """granted_at <= requested_at <= delegated_at passes (equal instants too)."""
        request_["original_task"]["requested_at"] = request_["cap_origin"]["granted_at"]
        assert findings(judge(request_), "TIME-01") == []

    def test_delegated_before_granted_reads_as_a_sentence(self, request_: dict[str, Any]) -> None:
        """A delegation before its grant is refused with a message giving both times."""
        request_["cap_origin"]["granted_at"] = "2025-10-01T09:00:00Z"
        verdict = evaluate(request_, context(), NOW + timedelta(hours=1), virtual_constitution())
        messages = [f.message for f in findings(verdict, "TIME-01")]
        assert (
            "delegation_context.delegated_at (2025-10-01T08:05:00Z) is before cap_origin.granted_at "
            "(2025-10-01T09:00:00Z): delegated before its authority was granted"
        ) in messages
        assert ("TIME-01", "original_task.requested_at") in violated(verdict)

    def test_delegated_before_requested_is_refused(self, request_: dict[str, Any]) -> None:
        """A delegation dated before its task was requested is refused."""
        request_["delegation_context"]["delegated_at"] = "2025-10-01T07:55:00Z"
        assert violated(judge(request_)) == {("TIME-01", "delegation_context.delegated_at")}


class TestTime02Future:
    def test_within_clock_skew_passes(self, request_: dict[str, Any]) -> None:
        """A timestamp up to clock_skew_seconds ahead of now is tolerated."""
        request_["delegation_context"]["delegated_at"] = "2025-10-01T09:00:59Z"
        assert findings(judge(request_), "TIME-02") == []

    def test_beyond_clock_skew_is_refused(self, request_: dict[str, Any]) -> None:
        """A timestamp beyond the skew is "in the future" and refused at its path."""
        request_["delegation_context"]["delegated_at"] = "2025-10-01T09:01:01Z"
        verdict = judge(request_)
        assert violated(verdict) == {("TIME-02", "delegation_context.delegated_at")}
        assert "delegated in the future" in verdict.violations[0].message

    def test_skew_comes_from_the_constitution(self, request_: dict[str, Any]) -> None:
        """clock_skew_seconds = 0 refuses even one second ahead."""
        request_["original_task"]["requested_at"] = "2025-10-01T09:00:01Z"
        request_["delegation_context"]["delegated_at"] = "2025-10-01T09:00:01Z"
        verdict = evaluate(request_, context(), NOW, virtual_constitution(clock_skew_seconds=0))
        assert {f.path for f in findings(verdict, "TIME-02")} == {
            "original_task.requested_at",
            "delegation_context.delegated_at",
        }
