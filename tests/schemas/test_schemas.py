"""The schemas: the ct_dev fixture parses, events round-trip, exported JSON Schema files are fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import EVENT_TYPES, SpawnRequest, event_model, parse_event_payload
from schemas.events import AgentSpawned, GateDecided, OperatorNote, Verdict
from schemas.export import OUT, documents, render, stale

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ct_dev_spawn_request.json"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "ct_dev_spawn_request.json"


class TestFixture:
    def test_ct_dev_request_parses_as_given(self) -> None:
        """The original ct_dev example request validates into a SpawnRequest unchanged."""
        raw = json.loads(FIXTURE.read_text())
        req = SpawnRequest.model_validate(raw)
        assert req.delegation_context.phantom_level == "Delegation/Cap"
        assert req.original_task.requested_at.isoformat() == "2025-10-01T08:00:00+00:00"
        assert req.model_dump(mode="json", exclude_none=True) == raw

    @pytest.mark.skipif(not SHARED.exists(), reason="shared/ is not beside the checkout")
    def test_fixture_copy_is_byte_identical(self) -> None:
        """The test copy of the fixture is the shared file, byte for byte."""
        assert FIXTURE.read_bytes() == SHARED.read_bytes()

    def test_timestamp_without_timezone_is_refused_with_its_own_error_type(self) -> None:
        """A naive timestamp fails with the `rfc3339` error type (the gate maps it to SCH-02)."""
        raw = json.loads(FIXTURE.read_text())
        raw["original_task"]["requested_at"] = "2025-10-01T08:00:00"
        with pytest.raises(ValidationError) as info:
            SpawnRequest.model_validate(raw)
        err = info.value.errors()[0]
        assert err["type"] == "rfc3339"
        assert err["loc"] == ("original_task", "requested_at")

    def test_unknown_key_is_refused(self) -> None:
        """A typo such as `delegated_too` is an error, never silently ignored."""
        raw = json.loads(FIXTURE.read_text())
        raw["delegation_context"]["delegated_too"] = "x"
        with pytest.raises(ValidationError) as info:
            SpawnRequest.model_validate(raw)
        assert info.value.errors()[0]["type"] == "extra_forbidden"


class TestEvents:
    def test_every_event_type_has_a_model(self) -> None:
        """The union covers the lifecycle the issue lists (and ours)."""
        required = {
            "delegation.requested",
            "gate.decided",
            "agent.spawned",
            "message.sent",
            "tool.called",
            "permission.decided",
            "output.received",
            "agent.completed",
            "agent.stopped",
            "agent.failed",
            "session.interrupted",
            "delegation.revoked",
            "checkpoint.signed",
            "ledger.pruned",
            "operator.note",
        }
        assert required <= set(EVENT_TYPES)

    def test_payload_round_trips_through_the_union(self) -> None:
        """Dumping an event in JSON mode and parsing it back yields an equal model of the same class."""
        ev = GateDecided(
            verdict=Verdict(decision="approved", profile="default", ruleset_hash="sha256:x"),
            task_id="t",
            role="r",
        )
        back = parse_event_payload(ev.model_dump(mode="json"))
        assert back == ev
        assert type(back) is GateDecided

    def test_models_are_frozen(self) -> None:
        """Recorded events cannot be mutated after construction."""
        note = OperatorNote(text="x", by="ops")
        with pytest.raises(ValidationError):
            note.text = "y"  # type: ignore[misc]

    def test_unknown_type_names_the_known_ones(self) -> None:
        """Asking for an unknown event type lists the valid ones."""
        with pytest.raises(KeyError, match=r"agent\.spawned"):
            event_model("agent.exploded")

    def test_spawned_requires_its_identity(self) -> None:
        """An agent.spawned without a session id is refused."""
        with pytest.raises(ValidationError, match="session_id"):
            AgentSpawned.model_validate(
                {"task_id": "t", "role": "r", "root_session_id": "x", "principal": "p", "delegator": "d"}
            )


class TestJsonSchemaExport:
    def test_exported_files_are_fresh(self) -> None:
        """schemas/json matches the models; run `python -m schemas.export` after changing a model."""
        assert stale() == []

    def test_staleness_is_detected(self, tmp_path: Path) -> None:
        """An edited or missing schema file is reported as stale."""
        for name, doc in documents().items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(render(doc))
        assert stale(tmp_path) == []
        (tmp_path / "verdict.json").write_text("{}")
        (tmp_path / "events" / "operator.note.json").unlink()
        assert set(stale(tmp_path)) == {"verdict.json", "events/operator.note.json"}

    def test_files_live_in_the_package(self) -> None:
        """The export folder is schemas/json inside the package."""
        assert OUT.name == "json"
        assert (OUT / "spawn_request.json").exists()
