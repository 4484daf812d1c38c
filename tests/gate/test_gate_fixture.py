"""The ct_dev payload: approved as it is in the default profile, refused with guidance in strict."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from gate import ChainContext, Constitution, evaluate, load_constitution
from tests.gate.gate_builders import FIXTURE, FIXTURE_SHA256, NOW


class TestFixtureFile:
    def test_copy_is_byte_identical(self) -> None:
        """tests/fixtures/ct_dev_spawn_request.json is the shared fixture, unedited."""
        assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256


class TestDefaultProfile:
    def test_fixture_is_approved_with_exactly_one_att02_warning(
        self, fixture_request: dict[str, Any], root_chain: ChainContext, default_rules: Constitution
    ) -> None:
        """ct_dev's payload passes as it is (bar its folder), with one warning: free-text capability."""
        verdict = evaluate(fixture_request, root_chain, NOW, default_rules)
        assert verdict.decision == "approved"
        assert verdict.violations == []
        assert [(w.rule, w.severity, w.hop, w.path) for w in verdict.warnings] == [
            ("ATT-02", "warning", 0, "delegation_context.scopes")
        ]
        assert verdict.profile == "default"

    def test_fixture_is_approved_at_the_current_time_too(
        self, fixture_request: dict[str, Any], root_chain: ChainContext, default_rules: Constitution
    ) -> None:
        """Nothing in the fixture goes stale: a much later `now` still approves it."""
        from datetime import UTC, datetime

        later = datetime(2031, 1, 1, tzinfo=UTC)
        assert evaluate(fixture_request, root_chain, later, default_rules).decision == "approved"

    def test_default_constitution_text_is_equivalent(
        self, tmp_path: Path, fixture_request: dict[str, Any]
    ) -> None:
        """An explicit `profile = "default"` hashes like a file that leaves it out."""
        implicit = load_constitution(f'allowed_roots = ["{tmp_path}"]')
        explicit = load_constitution(f'profile = "default"\nmax_depth = 3\nallowed_roots = ["{tmp_path}"]')
        assert implicit.ruleset_hash == explicit.ruleset_hash


class TestStrictProfile:
    def test_fixture_is_rejected_saying_what_to_add(
        self, fixture_request: dict[str, Any], root_chain: ChainContext, strict_rules: Constitution
    ) -> None:
        """In strict the free-text payload is refused; the findings ask for scopes, expires_at, a budget."""
        verdict = evaluate(fixture_request, root_chain, NOW, strict_rules)
        assert verdict.decision == "rejected"
        assert verdict.profile == "strict"
        assert {(f.rule, f.path) for f in verdict.violations} == {
            ("ATT-02", "delegation_context.scopes"),
            ("ATT-02", "cap_origin.scopes"),
            ("TIME-03", "delegation_context.expires_at"),
            ("BUD-01", "delegation_context.budget"),
        }
        text = " ".join(f.message for f in verdict.violations)
        for advice in (
            "add delegation_context.scopes",
            "add cap_origin.scopes",
            "add one at most",
            "add {max_tokens",
        ):
            assert advice in text

    def test_fixture_with_structured_fields_passes_strict(
        self, fixture_request: dict[str, Any], root_chain: ChainContext, strict_rules: Constitution
    ) -> None:
        """Adding what the strict findings ask for makes the same payload pass."""
        fixture_request["cap_origin"]["scopes"] = ["repo:src/**#fs", "repo:tests/**#fs", "shell#exec"]
        fixture_request["delegation_context"].update(
            scopes=["repo:src/**#fs/write", "repo:tests/**#fs/write"],
            expires_at="2025-10-01T12:00:00Z",
            budget={"max_tokens": 100_000, "max_cost_usd": 2.5},
        )
        verdict = evaluate(fixture_request, root_chain, NOW, strict_rules)
        assert verdict.decision == "approved", verdict.violations
        assert verdict.warnings == []
