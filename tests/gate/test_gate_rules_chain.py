"""Rules that judge a hop against its ancestry: CHN-01..03, ATT-01, ATT-02, CON-01, DEP-01, CYC-01, REV-01."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from gate import ChainContext, evaluate
from tests.gate.gate_builders import (
    NOW,
    chain_of,
    context,
    delegate,
    findings,
    hops,
    judge_chain,
    violated,
    virtual_constitution,
    virtual_request,
)

RULES = virtual_constitution()


@pytest.fixture
def root() -> dict[str, Any]:
    return virtual_request()


class TestChn01Continuity:
    def test_sound_chain_is_approved(self, root: dict[str, Any]) -> None:
        """A three-hop chain built hop by hop is approved with no chain finding."""
        verdict = judge_chain(chain_of(root, ["tester", "reviewer"]), RULES)
        assert verdict.violations == []
        assert verdict.decision == "approved"

    def test_foreign_delegator_is_refused(self, root: dict[str, Any]) -> None:
        """CHN-01 refuses a nested hop whose delegator is not its parent's delegated_to."""
        child = delegate(root, "tester", delegator="frontend_specialist")
        verdict = judge_chain([root, child], RULES)
        assert ("CHN-01", "delegation_context.delegator") in violated(verdict)
        (finding,) = findings(verdict, "CHN-01")
        assert finding.hop == 1
        assert finding.expected == "backend_specialist"


class TestChn02Restatement:
    def test_restatement_tolerates_whitespace_and_case(self, root: dict[str, Any]) -> None:
        """delegator_cap may differ from the parent's delegated_cap in spacing and case only."""
        child = delegate(root, "tester", delegator_cap="  implement OAUTH2 flow   with automated tests ")
        assert findings(judge_chain([root, child], RULES), "CHN-02") == []

    def test_other_capability_is_refused(self, root: dict[str, Any]) -> None:
        """CHN-02 refuses a delegator claiming a capability its parent did not give."""
        child = delegate(root, "tester", delegator_cap="Full system development authority")
        assert ("CHN-02", "delegation_context.delegator_cap") in violated(judge_chain([root, child], RULES))


class TestChn03Origin:
    def test_canonically_equal_origin_passes(self, root: dict[str, Any]) -> None:
        """The same instant written with another offset is the same original_task."""
        child = delegate(root, "tester")
        child["original_task"]["requested_at"] = "2025-10-01T10:00:00+02:00"
        child["cap_origin"]["granted_at"] = "2025-10-01T07:30:00.000Z"
        assert findings(judge_chain([root, child], RULES), "CHN-03") == []

    @pytest.mark.parametrize(
        ("section", "field", "value"),
        [
            ("original_task", "title", "Implement everything"),
            ("original_task", "requested_at", "2025-10-01T08:00:01Z"),
            ("cap_origin", "original_scope", "Root access"),
            ("cap_origin", "scopes", ["**#shell"]),
        ],
    )
    def test_changed_origin_is_refused(
        self, root: dict[str, Any], section: str, field: str, value: Any
    ) -> None:
        """CHN-03 refuses any change to original_task or cap_origin, naming the changed field."""
        child = delegate(root, "tester")
        child[section][field] = value
        verdict = judge_chain([root, child], RULES)
        assert ("CHN-03", f"{section}.{field}") in violated(verdict)
        assert "unchanged down the chain" in findings(verdict, "CHN-03")[0].message


class TestAtt01Scopes:
    def scoped_root(self, root: dict[str, Any]) -> dict[str, Any]:
        root["cap_origin"]["scopes"] = ["repo:src/**#fs", "shell#exec", "net#fetch"]
        root["delegation_context"]["scopes"] = ["repo:src/**#fs/write", "shell#exec"]
        return root

    def test_root_scopes_within_the_grant_pass(self, root: dict[str, Any]) -> None:
        """A root hop's scopes covered by cap_origin.scopes are approved without warnings."""
        verdict = judge_chain([self.scoped_root(root)], RULES)
        assert verdict.decision == "approved"
        assert verdict.warnings == []

    def test_root_scope_beyond_the_grant_is_refused(self, root: dict[str, Any]) -> None:
        """ATT-01 refuses a root scope that cap_origin.scopes does not cover."""
        root = self.scoped_root(root)
        root["delegation_context"]["scopes"].append("repo:docs/**#fs/write")
        verdict = judge_chain([root], RULES)
        assert violated(verdict) == {("ATT-01", "delegation_context.scopes[2]")}

    def test_the_whole_of_a_kind_covers_its_resources_only(self, root: dict[str, Any]) -> None:
        """`repo:**` grants the whole repo (`repo:`, `repo:src/**`, `repo:docs/a.md`), not `net:` or `*`."""
        root["cap_origin"]["scopes"] = ["repo:**#fs", "shell#exec"]
        root["delegation_context"]["scopes"] = ["repo:**#fs/read", "repo:src/**#fs/write", "shell#exec"]
        assert judge_chain([root], RULES).decision == "approved"
        child = delegate(
            root, "tester", scopes=["repo:docs/a.md#fs/read", "repo:#fs/read", "repo:**#fs/read"]
        )
        assert findings(judge_chain([root, child], RULES), "ATT-01") == []
        wider = delegate(
            root, "tester", scopes=["repo:**#fs/read", "net:**#fs/read", "*/**#fs/read", "**#fs"]
        )
        assert {path for rule, path in violated(judge_chain([root, wider], RULES)) if rule == "ATT-01"} == {
            "delegation_context.scopes[1]",
            "delegation_context.scopes[2]",
            "delegation_context.scopes[3]",
        }
        narrower = delegate(root, "tester", scopes=["repo:src/**#fs/write"])
        again = delegate(narrower, "reviewer", scopes=["repo:**#fs/write"])  # wider than its parent
        assert ("ATT-01", "delegation_context.scopes[0]") in violated(
            judge_chain([root, narrower, again], RULES)
        )

    def test_narrower_child_passes(self, root: dict[str, Any]) -> None:
        """A child may narrow its parent's scopes (segments, wildcards, actions)."""
        root = self.scoped_root(root)
        child = delegate(root, "tester", scopes=["repo:src/api/*.py#fs/write", "repo:src/x#fs/write/append"])
        assert findings(judge_chain([root, child], RULES), "ATT-01") == []

    @pytest.mark.parametrize(
        "scope",
        [
            "repo:src/**#fs",
            "repo:*/**#fs/write",
            "net#fetch",
            "shell#execx",
            "repo:src#fs/read",
            "**#shell/exec",
        ],
    )
    def test_wider_child_is_refused(self, root: dict[str, Any], scope: str) -> None:
        """ATT-01 refuses a child scope that no parent scope covers, at its index."""
        root = self.scoped_root(root)
        child = delegate(root, "tester", scopes=["shell#exec", scope])
        verdict = judge_chain([root, child], RULES)
        assert ("ATT-01", "delegation_context.scopes[1]") in violated(verdict)
        assert findings(verdict, "ATT-01")[0].expected == ["repo:src/**#fs/write", "shell#exec"]

    def test_free_text_parent_defers_to_nearest_structured_ancestor(self, root: dict[str, Any]) -> None:
        """Under a free-text hop, a child's scopes are checked against the nearest structured scopes above."""
        root = self.scoped_root(root)
        middle = delegate(root, "tester", scopes=None)
        del middle["delegation_context"]["scopes"]
        ok = delegate(middle, "reviewer", scopes=["shell#exec"])
        bad = delegate(middle, "reviewer", scopes=["net#fetch"])
        assert findings(judge_chain([root, middle, ok], RULES), "ATT-01") == []
        assert ("ATT-01", "delegation_context.scopes[0]") in violated(judge_chain([root, middle, bad], RULES))


class TestAtt02FreeText:
    def test_structured_request_has_no_att02(self, root: dict[str, Any]) -> None:
        """With scopes on both sides there is nothing to warn about."""
        root["cap_origin"]["scopes"] = ["shell#exec"]
        root["delegation_context"]["scopes"] = ["shell#exec"]
        assert findings(judge_chain([root], RULES), "ATT-02") == []

    def test_free_text_warns_in_default_and_refuses_in_strict(self, root: dict[str, Any]) -> None:
        """ATT-02 is a warning in the default profile and a violation in strict."""
        default = judge_chain([root], RULES)
        assert [(f.rule, f.path, f.severity) for f in default.warnings] == [
            ("ATT-02", "delegation_context.scopes", "warning")
        ]
        strict = judge_chain([root], virtual_constitution(profile="strict"))
        assert ("ATT-02", "delegation_context.scopes") in violated(strict)

    def test_scopes_without_a_grant_to_compare_warn(self, root: dict[str, Any]) -> None:
        """Scopes under a free-text cap_origin cannot be checked: ATT-02 at cap_origin.scopes."""
        root["delegation_context"]["scopes"] = ["shell#exec"]
        verdict = judge_chain([root], RULES)
        assert [(f.rule, f.path) for f in verdict.warnings] == [("ATT-02", "cap_origin.scopes")]
        assert verdict.decision == "approved"


class TestCon01Constraints:
    def test_normalised_and_added_constraints_pass(self, root: dict[str, Any]) -> None:
        """A child may restate constraints with other spacing or case, and add its own."""
        child = delegate(
            root,
            "tester",
            constraints=["use  serena TOOLS only", "RETURN reproducible test plan ", "No network access"],
        )
        assert findings(judge_chain([root, child], RULES), "CON-01") == []

    def test_dropped_constraint_is_refused(self, root: dict[str, Any]) -> None:
        """CON-01 refuses a child that drops a parent's constraint, naming the constraint."""
        child = delegate(root, "tester", constraints=["Use Serena tools only"])
        verdict = judge_chain([root, child], RULES)
        assert violated(verdict) == {("CON-01", "delegation_context.constraints")}
        assert findings(verdict, "CON-01")[0].expected == "Return reproducible test plan"

    def test_constraint_of_a_grandparent_is_inherited(self, root: dict[str, Any]) -> None:
        """A constraint added at hop 1 must still be carried at hop 2."""
        child = delegate(root, "tester")
        child["delegation_context"]["constraints"].append("No network access")
        grandchild = delegate(child, "reviewer", constraints=root["delegation_context"]["constraints"])
        verdict = judge_chain([root, child, grandchild], RULES)
        (finding,) = findings(verdict, "CON-01")
        assert "hop 1" in finding.message
        assert finding.hop == 2


class TestDep01Depth:
    def test_max_depth_is_allowed(self, root: dict[str, Any]) -> None:
        """A hop at exactly max_depth (3) is allowed."""
        requests = chain_of(root, ["tester", "reviewer", "documenter"])
        assert findings(judge_chain(requests, RULES), "DEP-01") == []

    def test_beyond_max_depth_is_refused(self, root: dict[str, Any]) -> None:
        """DEP-01 refuses a hop deeper than max_depth."""
        requests = chain_of(root, ["tester", "reviewer", "documenter", "frontend_specialist"])
        verdict = judge_chain(requests, RULES)
        assert violated(verdict) == {("DEP-01", "")}
        assert verdict.violations[0].actual == 4

    def test_role_override_applies(self, root: dict[str, Any]) -> None:
        """[roles.<role>] max_depth overrides the global limit for delegations to that role."""
        rules = virtual_constitution(roles={"tester": {"max_depth": 0}})
        verdict = judge_chain(chain_of(root, ["tester"]), rules)
        assert ("DEP-01", "") in violated(verdict)
        assert "[roles.tester] max_depth" in verdict.violations[0].message


class TestCyc01Cycles:
    def test_distinct_principals_pass(self, root: dict[str, Any]) -> None:
        """A path of distinct principals has no cycle."""
        assert findings(judge_chain(chain_of(root, ["tester", "reviewer"]), RULES), "CYC-01") == []

    def test_delegating_back_to_an_ancestor_is_refused(self, root: dict[str, Any]) -> None:
        """CYC-01 refuses a hop that delegates to a principal already on the path."""
        requests = chain_of(root, ["tester", "backend_specialist"])
        verdict = judge_chain(requests, RULES)
        assert ("CYC-01", "delegation_context.delegated_to") in violated(verdict)
        assert "the chain contains a cycle" in findings(verdict, "CYC-01")[0].message

    def test_delegating_back_to_the_root_delegator_is_refused(self, root: dict[str, Any]) -> None:
        """The root delegator (here "Project Manager") is on the path: delegating back to it is a cycle."""
        requests = chain_of(root, ["tester", "project_manager"])
        verdict = judge_chain(requests, RULES)
        (finding,) = findings(verdict, "CYC-01")
        assert (finding.path, finding.hop) == ("delegation_context.delegated_to", 2)
        assert "delegator of hop 0" in finding.message

    def test_self_delegation_is_left_to_id04(self, root: dict[str, Any]) -> None:
        """Delegator == delegated_to is reported once, by ID-04, not also as a cycle."""
        child = delegate(root, "backend_specialist")
        verdict = judge_chain([root, child], RULES)
        assert "ID-04" in {f.rule for f in verdict.violations}
        assert findings(verdict, "CYC-01") == []


class TestRev01Revocation:
    def test_unrevoked_chain_passes(self, root: dict[str, Any]) -> None:
        """No revocation, no REV-01 finding."""
        assert findings(judge_chain(chain_of(root, ["tester"]), RULES), "REV-01") == []

    def test_revoked_hop_is_refused(self, root: dict[str, Any]) -> None:
        """REV-01 refuses a delegation under a hop marked revoked, at that hop."""
        verdict = judge_chain(chain_of(root, ["tester", "reviewer"]), RULES, revoked=[0])
        assert violated(verdict) == {("REV-01", "")}
        assert verdict.violations[0].hop == 0

    def test_revoked_session_list_is_honoured(self, root: dict[str, Any]) -> None:
        """A session listed in revoked_sessions counts as revoked too."""
        requests = chain_of(root, ["tester", "reviewer"])
        ctx = context(hops(requests[:-1]), revoked_sessions={"s1"})
        verdict = evaluate(requests[-1], ctx, NOW, RULES)
        assert [(f.rule, f.hop) for f in verdict.violations] == [("REV-01", 1)]


class TestTime01Chain:
    def test_child_after_parent_passes(self, root: dict[str, Any]) -> None:
        """A child delegated after its parent has no TIME-01 finding."""
        assert findings(judge_chain(chain_of(root, ["tester"]), RULES), "TIME-01") == []

    def test_child_before_parent_is_refused(self, root: dict[str, Any]) -> None:
        """TIME-01 refuses a hop delegated before its parent hop was."""
        child = delegate(root, "tester", after=timedelta(minutes=-1))
        verdict = judge_chain([root, child], RULES)
        assert violated(verdict) == {("TIME-01", "delegation_context.delegated_at")}
        assert "delegated before its parent" in verdict.violations[0].message


def test_context_caches_are_per_hop(root: dict[str, Any]) -> None:
    """Hop-derived views are computed once and reused across decisions."""
    parents = hops(chain_of(root, ["tester"]))
    assert parents[1].constraints is parents[1].constraints
    ctx = ChainContext(parents=parents)
    assert ctx.inherited_constraints is ctx.inherited_constraints
