"""Limits and facts: TIME-03 expiry, BUD-01 budgets, MOD-01 models, DIR-01 folders, ROLE-01 roles."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gate import ChainContext, Constitution, DirectoryFacts, RemainingBudget, evaluate
from tests.gate.gate_builders import (
    NOW,
    chain_of,
    context,
    delegate,
    facts_for,
    findings,
    judge_chain,
    violated,
    virtual_constitution,
    virtual_request,
)

RULES = virtual_constitution()
STRICT = virtual_constitution(profile="strict")


@pytest.fixture
def root() -> dict[str, Any]:
    return virtual_request()


class TestTime03Expiry:
    def test_future_expiry_within_limits_passes(self, root: dict[str, Any]) -> None:
        """An expires_at in the future, within the TTL cap, passes."""
        root["delegation_context"]["expires_at"] = "2025-10-01T12:00:00Z"
        assert findings(judge_chain([root], RULES), "TIME-03") == []

    def test_past_expiry_is_refused(self, root: dict[str, Any]) -> None:
        """TIME-03 refuses an expires_at that is not in the future."""
        root["delegation_context"]["expires_at"] = "2025-10-01T08:30:00Z"
        assert violated(judge_chain([root], RULES)) == {("TIME-03", "delegation_context.expires_at")}

    def test_child_cannot_outlive_parent(self, root: dict[str, Any]) -> None:
        """TIME-03 refuses a child that would expire after its parent hop."""
        root["delegation_context"]["expires_at"] = "2025-10-01T10:00:00Z"
        ok = delegate(root, "tester", expires_at="2025-10-01T10:00:00Z")
        late = delegate(root, "tester", expires_at="2025-10-01T10:00:01Z")
        assert findings(judge_chain([root, ok], RULES), "TIME-03") == []
        verdict = judge_chain([root, late], RULES)
        assert violated(verdict) == {("TIME-03", "delegation_context.expires_at")}
        assert "cannot outlive its parent" in verdict.violations[0].message

    def test_engine_resolved_expiry_of_a_hop_counts(self, root: dict[str, Any]) -> None:
        """Hop.expires_at (e.g. from a timeout) bounds the children like the request's own expiry."""
        child = delegate(root, "tester", expires_at="2025-10-01T11:00:00Z")
        verdict = judge_chain([root, child], RULES, expires={0: NOW + timedelta(minutes=30)})
        assert ("TIME-03", "delegation_context.expires_at") in violated(verdict)

    def test_expired_ancestor_is_refused(self, root: dict[str, Any]) -> None:
        """Nothing can be delegated under a hop that has already expired, even without an expires_at."""
        root["delegation_context"]["expires_at"] = "2025-10-01T08:50:00Z"
        child = delegate(root, "tester")
        del child["delegation_context"]["expires_at"]
        verdict = judge_chain([root, child], RULES)
        assert [(f.rule, f.hop) for f in verdict.violations] == [("TIME-03", 0)]

    def test_ttl_cap_applies(self, root: dict[str, Any]) -> None:
        """An expiry further away than max_ttl_seconds (role override first) is refused."""
        root["delegation_context"]["expires_at"] = "2025-10-01T11:00:00Z"
        rules = virtual_constitution(roles={"backend_specialist": {"max_ttl_seconds": 3600}})
        verdict = judge_chain([root], rules)
        assert violated(verdict) == {("TIME-03", "delegation_context.expires_at")}
        assert "[roles.backend_specialist] max_ttl_seconds" in verdict.violations[0].message

    def test_strict_requires_an_expiry(self, root: dict[str, Any]) -> None:
        """The strict profile refuses a delegation without expires_at and says the latest allowed."""
        verdict = judge_chain([root], STRICT)
        (finding,) = findings(verdict, "TIME-03")
        assert (finding.severity, finding.path) == ("error", "delegation_context.expires_at")
        assert finding.expected == "<= 2025-10-02T09:00:00Z"


class TestBud01Budget:
    def test_budget_within_remaining_passes(self, root: dict[str, Any]) -> None:
        """A child's budget no larger than its parent's remaining budget passes."""
        child = delegate(root, "tester", budget={"max_tokens": 1000, "max_cost_usd": 0.5})
        verdict = judge_chain([root, child], RULES, remaining={0: RemainingBudget(tokens=1000, cost_usd=0.5)})
        assert findings(verdict, "BUD-01") == []

    def test_budget_beyond_remaining_is_refused(self, root: dict[str, Any]) -> None:
        """BUD-01 refuses a child budget larger than what the tightest ancestor has left."""
        requests = chain_of(root, ["tester"])
        requests.append(delegate(requests[-1], "reviewer", budget={"max_tokens": 600, "max_cost_usd": 0.1}))
        verdict = judge_chain(
            requests,
            RULES,
            remaining={0: RemainingBudget(tokens=500), 1: RemainingBudget(tokens=900, cost_usd=1.0)},
        )
        assert violated(verdict) == {("BUD-01", "delegation_context.budget.max_tokens")}
        assert "hop 0 has left (500 tokens)" in verdict.violations[0].message

    def test_exhausted_ancestor_is_refused(self, root: dict[str, Any]) -> None:
        """Nothing may be delegated under a hop with no budget left, even without a budget of its own."""
        verdict = judge_chain(chain_of(root, ["tester"]), RULES, remaining={0: RemainingBudget(cost_usd=0.0)})
        assert [(f.rule, f.hop, f.path) for f in verdict.violations] == [
            ("BUD-01", 0, "delegation_context.budget")
        ]

    def test_role_ceiling_applies(self, root: dict[str, Any]) -> None:
        """[roles.<role>] max_cost_usd caps the budget a delegation to that role may carry."""
        root["delegation_context"]["budget"] = {"max_cost_usd": 3.0}
        rules = virtual_constitution(roles={"backend_specialist": {"max_cost_usd": 2.0}})
        assert violated(judge_chain([root], rules)) == {("BUD-01", "delegation_context.budget.max_cost_usd")}

    def test_strict_requires_a_budget_unless_a_default_exists(self, root: dict[str, Any]) -> None:
        """Strict refuses a missing budget; a default_budget in the constitution stands in for it."""
        assert ("BUD-01", "delegation_context.budget") in violated(judge_chain([root], STRICT))
        with_default = virtual_constitution(profile="strict", default_budget={"max_tokens": 10_000})
        assert findings(judge_chain([root], with_default), "BUD-01") == []


class TestMod01Models:
    def test_any_model_when_unrestricted(self, root: dict[str, Any]) -> None:
        """An empty allowed_models allows any model."""
        root["model"] = "anything-goes"
        assert findings(judge_chain([root], RULES), "MOD-01") == []

    def test_pattern_allows_and_refuses(self, root: dict[str, Any]) -> None:
        """allowed_models patterns admit matching models and refuse others at `model`."""
        rules = virtual_constitution(allowed_models=["claude-sonnet-*"])
        assert findings(judge_chain([root], rules), "MOD-01") == []
        root["model"] = "gpt-5"
        assert violated(judge_chain([root], rules)) == {("MOD-01", "model")}

    def test_role_override_and_absent_model(self, root: dict[str, Any]) -> None:
        """A role's allowed_models replaces the global list; no model at all is never refused."""
        rules = virtual_constitution(roles={"backend_specialist": {"allowed_models": ["claude-opus-*"]}})
        assert violated(judge_chain([root], rules)) == {("MOD-01", "model")}
        root["model"] = None
        assert findings(judge_chain([root], rules), "MOD-01") == []


class TestDir01Directory:
    def judge(self, request: dict[str, Any], facts: DirectoryFacts | None, rules: Constitution) -> set[Any]:
        verdict = evaluate(request, context(directory=facts), NOW, rules)
        return {(f.rule, f.path, f.severity) for f in findings(verdict, "DIR-01")}

    def test_folder_inside_the_root_passes(
        self, fixture_request: dict[str, Any], root_chain: ChainContext, default_rules: Constitution
    ) -> None:
        """An existing folder under an allowed root passes DIR-01."""
        assert findings(evaluate(fixture_request, root_chain, NOW, default_rules), "DIR-01") == []

    def test_folder_outside_the_roots_is_refused(self, tmp_path: Path, default_rules: Constitution) -> None:
        """DIR-01 refuses a real folder outside every allowed root."""
        outside = Path(os.path.dirname(tmp_path))
        request = virtual_request()
        request["project_directory"] = str(outside)
        assert self.judge(request, facts_for(outside), default_rules) == {
            ("DIR-01", "project_directory", "error")
        }

    def test_symlink_escaping_the_root_is_refused(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, default_rules: Constitution
    ) -> None:
        """A link inside the root that resolves outside it is refused (real paths are compared)."""
        elsewhere = tmp_path_factory.mktemp("elsewhere")
        link = tmp_path / "link"
        link.symlink_to(elsewhere, target_is_directory=True)
        request = virtual_request()
        request["project_directory"] = str(link)
        facts = facts_for(link)
        assert self.judge(request, facts, default_rules) == {("DIR-01", "project_directory", "error")}
        verdict = evaluate(request, context(directory=facts), NOW, default_rules)
        assert "through a symlink" in findings(verdict, "DIR-01")[0].message

    @pytest.mark.parametrize("kind", ["missing", "file"])
    def test_missing_folder_or_file_is_refused(
        self, tmp_path: Path, default_rules: Constitution, kind: str
    ) -> None:
        """A path that does not exist, or is a file, is refused."""
        target = tmp_path / "target"
        if kind == "file":
            target.write_text("x")
        request = virtual_request()
        request["project_directory"] = str(target)
        assert self.judge(request, facts_for(target), default_rules) == {
            ("DIR-01", "project_directory", "error")
        }

    def test_relative_path_is_refused(self) -> None:
        """A relative project_directory is refused whatever the facts say."""
        request = virtual_request()
        request["project_directory"] = "project"
        assert self.judge(request, None, RULES) == {("DIR-01", "project_directory", "error")}

    def test_facts_for_another_path_are_refused(self) -> None:
        """Facts describing a different path than the request's cannot vouch for it."""
        request = virtual_request()
        facts = DirectoryFacts(path="/srv/work/other", exists=True, is_dir=True, real_path="/srv/work/other")
        assert self.judge(request, facts, RULES) == {("DIR-01", "project_directory", "error")}

    def test_no_allowed_roots_refuses(self) -> None:
        """The built-in constitution allows no roots: every folder is refused until some are configured."""
        facts = DirectoryFacts(
            path="/srv/work/project", exists=True, is_dir=True, real_path="/srv/work/project"
        )
        assert self.judge(virtual_request(), facts, Constitution()) == {
            ("DIR-01", "project_directory", "error")
        }

    def test_unresolved_folder_warns_or_refuses_by_profile(self) -> None:
        """Without facts DIR-01 warns in the default profile and refuses in strict."""
        request = virtual_request()
        ctx = ChainContext(directory=None, known_roles=frozenset({"backend_specialist"}))
        default = evaluate(request, ctx, NOW, RULES)
        assert [(f.rule, f.severity) for f in findings(default, "DIR-01")] == [("DIR-01", "warning")]
        strict = evaluate(request, ctx, NOW, STRICT)
        assert ("DIR-01", "project_directory") in violated(strict)


class TestRole01Catalogue:
    def test_known_role_passes(self, root: dict[str, Any]) -> None:
        """A role from the catalogue passes."""
        assert findings(judge_chain([root], RULES), "ROLE-01") == []

    def test_unknown_role_is_refused_with_the_known_ones(self, root: dict[str, Any]) -> None:
        """ROLE-01 refuses an unknown role and lists the roles that exist."""
        root["role"] = root["delegation_context"]["delegated_to"] = "backend_specalist"
        verdict = evaluate(root, context(known_roles={"backend_specialist", "tester"}), NOW, RULES)
        (finding,) = findings(verdict, "ROLE-01")
        assert (finding.path, finding.expected) == ("role", ["backend_specialist", "tester"])
        assert "did you mean 'backend_specialist'?" in finding.message

    def test_missing_catalogue_warns(self, root: dict[str, Any]) -> None:
        """known_roles=None skips the check with a warning (a violation in strict)."""
        default = evaluate(root, context(known_roles=None), NOW, RULES)
        assert [(f.rule, f.severity) for f in findings(default, "ROLE-01")] == [("ROLE-01", "warning")]
        assert default.decision == "approved"
        strict = evaluate(root, context(known_roles=None), NOW, STRICT)
        assert ("ROLE-01", "role") in violated(strict)
