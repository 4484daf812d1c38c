"""What the audit report says about a real chain: tree, evidence, constraints, actions, budgets, re-runs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from audit_support import ADDED_CONSTRAINT, CHILD_SCOPES, CLEAN_TASK, TASK, Chain

import gate
from engine.audit import build_report, seal
from ledger import Ledger, canonical_bytes

pytestmark = pytest.mark.integration
Hops = Callable[[dict[str, Any]], dict[str, dict[str, Any]]]


class TestHeader:
    def test_scope_task_and_authority(self, report: dict[str, Any]) -> None:
        """The header names the task, who asked for it and under whose authority."""
        assert report["scope"]["task_id"] == TASK
        assert report["task"]["original_task"]["requester"] == "Auctor"
        assert report["task"]["cap_origin"]["ultimate_authority"] == "Auctor"
        assert report["format"] == "delegation-ledger/audit-report/v1"

    def test_verify_is_recomputed_and_head_recorded(self, chain_keys: Chain, report: dict[str, Any]) -> None:
        """The verify result covers every entry up to the head the report was built against."""
        with Ledger.open(chain_keys.db, create=False) as led:
            head = led.head()
        assert report["ledger"]["head"] == {"size": head.size, "hash": head.hex}
        assert report["ledger"]["verify"]["ok"] is True
        assert report["ledger"]["verify"]["entries"] == head.size
        assert report["ledger"]["verify"]["checkpoints_checked"] >= 1

    def test_newest_signed_checkpoint(self, report: dict[str, Any]) -> None:
        """The newest checkpoint is the one signed after the run, with its note."""
        cp = report["ledger"]["newest_checkpoint"]
        assert cp is not None
        assert cp["trigger"] == "manual"
        assert (
            cp["size"] == report["ledger"]["head"]["size"] - 1
        )  # its own checkpoint.signed entry follows it
        assert cp["note"].startswith(report["ledger"]["origin"])

    def test_rulesets_in_force(self, report: dict[str, Any], rules: gate.Constitution) -> None:
        """The ruleset recorded by constitution.loaded is rebuilt and is the one every verdict names."""
        r = report["rulesets"]
        assert [x["ruleset_hash"] for x in r["loaded"]] == [rules.ruleset_hash]
        assert r["loaded"][0]["rebuilt"] is True
        assert r["in_verdicts"] == [{"ruleset_hash": rules.ruleset_hash, "decisions": 7}]
        assert r["current"]["ruleset_hash"] == rules.ruleset_hash


class TestTree:
    def test_shape(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """Roots: R, H, B and the refused bad request; C under R, the refused hand-back under C, H2 under H"""
        ids = chain.ids
        assert {h["session_id"] for h in report["tree"]} == {
            ids["root"],
            ids["hang"],
            ids["budget"],
            ids["bad"],
        }
        by_id = hops(report)
        assert [c["session_id"] for c in by_id[ids["root"]]["children"]] == [ids["child"]]
        assert [c["session_id"] for c in by_id[ids["child"]]["children"]] == [ids["back"]]
        assert [c["session_id"] for c in by_id[ids["hang"]]["children"]] == [ids["hang_child"]]
        assert ids["clean"] not in by_id  # another task
        assert [by_id[ids[k]]["depth"] for k in ("root", "child", "back")] == [0, 1, 2]

    def test_principals_roles_and_final_states(
        self, chain: Chain, report: dict[str, Any], hops: Hops
    ) -> None:
        """Every hop names its role, principal, delegator, decision and final state."""
        by_id, ids = hops(report), chain.ids
        child = by_id[ids["child"]]
        assert (child["role"], child["principal"], child["delegator"]) == (
            "tester",
            "tester",
            "backend_specialist",
        )
        states = {
            k: (by_id[ids[k]]["decision"], by_id[ids[k]]["status"])
            for k in ("root", "child", "back", "bad", "hang", "hang_child", "budget")
        }
        assert states == {
            "root": ("approved", "completed"),
            "child": ("approved", "completed"),
            "back": ("rejected", "refused"),
            "bad": ("rejected", "refused"),
            "hang": ("approved", "revoked"),
            "hang_child": ("approved", "revoked"),
            "budget": ("approved", "failed"),
        }

    def test_capabilities_free_text_and_scopes(
        self, chain: Chain, report: dict[str, Any], hops: Hops
    ) -> None:
        """Free-text capabilities and structured scopes are both shown."""
        by_id = hops(report)
        assert by_id[chain.ids["root"]]["capabilities"]["scopes"] is None
        assert by_id[chain.ids["root"]]["capabilities"]["delegated_cap"] == "backend_specialist: OAuth2 work"
        assert by_id[chain.ids["child"]]["capabilities"]["scopes"] == CHILD_SCOPES

    def test_constraints_inherited_and_added(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """C carries R's constraints (inherited) and adds one; the hand-back inherits all three."""
        by_id = hops(report)
        root, child, back = (by_id[chain.ids[k]]["constraints"] for k in ("root", "child", "back"))
        assert root == {
            "inherited": [],
            "added": ["Use Serena tools only", "Return reproducible test plan"],
            "missing": [],
        }
        assert child == {
            "inherited": ["Use Serena tools only", "Return reproducible test plan"],
            "added": [ADDED_CONSTRAINT],
            "missing": [],
        }
        assert back["inherited"] == [*root["added"], ADDED_CONSTRAINT]
        assert back["added"] == []

    def test_evidence_entries_match_the_ledger(
        self, chain_keys: Chain, report: dict[str, Any], hops: Hops
    ) -> None:
        """Every evidence seq and hash is the ledger's own entry of that type and stream."""
        by_id = hops(report)
        with Ledger.open(chain_keys.db, create=False) as led:
            entries = {e.seq: e for e in led.entries()}
        checked = 0
        for sid, hop in by_id.items():
            for name, ev in hop["evidence"].items():
                if ev is None:
                    continue
                entry = entries[ev["seq"]]
                assert (entry.hash.hex(), entry.type) == (ev["hash"], ev["type"]), (sid, name)
                assert entry.stream == sid or name == "revoked"
                checked += 1
        assert checked >= 20
        root = by_id[chain_keys.ids["root"]]["evidence"]
        assert [root[k]["type"] for k in ("requested", "decided", "spawned", "terminal")] == [
            "delegation.requested",
            "gate.decided",
            "agent.spawned",
            "agent.completed",
        ]

    def test_revocation(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """H is revoked directly, H2 with H's subtree, by one delegation.revoked entry."""
        by_id = hops(report)
        h, h2 = by_id[chain.ids["hang"]]["revocation"], by_id[chain.ids["hang_child"]]["revocation"]
        assert h["direct"] is True
        assert h2["direct"] is False
        assert h2["via"] == chain.ids["hang"]
        assert h["seq"] == h2["seq"]
        assert h["reason"] == "no longer needed"
        assert by_id[chain.ids["root"]]["revocation"] is None

    def test_verdicts_with_findings(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """Each hop carries its recorded verdict, time and findings."""
        by_id = hops(report)
        back = by_id[chain.ids["back"]]["verdict"]
        assert [f["rule"] for f in back["violations"]] == ["CYC-01"]
        assert back["evaluated_at"]
        assert back["ledger_head"]
        assert {f["rule"] for f in by_id[chain.ids["bad"]]["verdict"]["violations"]} == {"ID-01", "ID-03"}


class TestActionsAndBudgets:
    def test_actions_under_the_delegation_that_covered_them(
        self, chain: Chain, report: dict[str, Any], hops: Hops
    ) -> None:
        """Tool calls are listed under their agent, with the permission rule that allowed them."""
        by_id = hops(report)
        root = [(a["name"], a["status"], a["coverage"]["rule"]) for a in by_id[chain.ids["root"]]["actions"]]
        assert [(name, status) for name, status, _ in root] == [
            ("write", "completed"),
            ("ledger_spawn_agent", "completed"),
        ]
        write_rule, spawn_rule = (rule for _, _, rule in root)
        # the write rule recorded at spawn: anything but the agents' configuration (engine.permissions)
        assert write_rule["*"] == "allow"
        assert write_rule["*/.opencode/*"] == "deny"
        assert spawn_rule == "gate"
        # the child's only write scope is a path (repo:tests/**): OpenCode asked, the policy answered
        child = [
            (a["kind"], a["name"], a.get("status") or a.get("reply"))
            for a in by_id[chain.ids["child"]]["actions"]
        ]
        assert child == [
            ("permission", "edit", "once"),  # OpenCode asks for its write tool as "edit"
            ("tool", "write", "completed"),
            ("tool", "ledger_spawn_agent", "error"),
        ]
        asked = by_id[chain.ids["child"]]["actions"][1]["coverage"]
        assert "inside the write scope repo:tests/**" in asked["by"]
        assert all(a["coverage"]["covered"] for h in by_id.values() for a in h["actions"])
        assert report["summary"]["tool_calls"] == 5

    def test_budget_allocated_and_consumed(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """Budgets: allocated at spawn (default budget or the request's), own and subtree consumption."""
        by_id = hops(report)
        root, child = by_id[chain.ids["root"]]["budget"], by_id[chain.ids["child"]]["budget"]
        assert root["allocated"] == {"max_tokens": 200000, "max_cost_usd": 5}
        assert root["subtree"]["tokens"] == root["consumed"]["tokens"] + child["consumed"]["tokens"]
        assert root["consumed"]["tokens"] > 0
        assert root["consumed"]["cost_usd"] > 0

    def test_budget_overrun_is_a_violation(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """B spent 5,050 tokens of 100: budget.exceeded is cited and the audit fails."""
        b = hops(report)[chain.ids["budget"]]["budget"]
        assert b["allocated"]["max_tokens"] == 100
        assert b["consumed"]["tokens"] == 5050
        assert [(x["limit"], x["allowed"], x["used"]) for x in b["exceeded"]] == [("tokens", 100, 5050)]
        overruns = [f for f in report["findings"] if f["code"] == "BUDGET_OVERRUN"]
        assert len(overruns) == 1
        assert overruns[0]["severity"] == "violation"
        assert overruns[0]["seq"] == b["exceeded"][0]["seq"]
        assert report["summary"]["result"] == "fail"
        assert report["summary"]["violations"] == 1


class TestRefusalsAndReruns:
    def test_refused_list(self, chain: Chain, report: dict[str, Any]) -> None:
        """Both refusals are listed with their findings."""
        refused = {r["session_id"]: r for r in report["refused"]}
        assert set(refused) == {chain.ids["back"], chain.ids["bad"]}
        assert refused[chain.ids["back"]]["parent_session_id"] == chain.ids["child"]
        assert [v["rule"] for v in refused[chain.ids["back"]]["violations"]] == ["CYC-01"]

    def test_every_decision_reproduces_exactly(self, report: dict[str, Any], hops: Hops) -> None:
        """The 7 decisions re-run to the same decision and findings, with the context as of their head."""
        assert report["summary"]["reruns"] == {
            "reproduced": 7,
            "approximate": 0,
            "differs": 0,
            "unavailable": 0,
        }
        for hop in hops(report).values():
            r = hop["rerun"]
            assert r["exact"], hop["session_id"]
            assert r["recorded_rules"]["same_findings"], hop["session_id"]
            assert r["context"]["as_of_seq"] < hop["evidence"]["decided"]["seq"]
            assert r["context"]["facts_recorded"] is True

    def test_child_context_has_its_parent(self, chain: Chain, report: dict[str, Any], hops: Hops) -> None:
        """The hand-back was judged with R and C as its parents; H2 with H."""
        by_id = hops(report)
        assert by_id[chain.ids["back"]]["rerun"]["context"]["parents"] == [
            chain.ids["root"],
            chain.ids["child"],
        ]
        assert by_id[chain.ids["hang_child"]]["rerun"]["context"]["parents"] == [chain.ids["hang"]]

    def test_current_rules_that_refuse_are_violations(self, chain_keys: Chain, hops: Hops) -> None:
        """Under rules allowing no nested hop, C and H2 (approved then) are now refused: violations."""
        stricter = gate.load_constitution(
            chain_keys.constitution.read_text().replace("max_depth = 3", "max_depth = 0")
        )
        with Ledger.open(chain_keys.db, create=False) as led:
            report = build_report(led, TASK, current=stricter)
        differs = {f["session_id"] for f in report["findings"] if f["code"] == "RERUN_DIFFERS_CURRENT"}
        assert differs == {chain_keys.ids["child"], chain_keys.ids["hang_child"]}
        by_id = hops(report)
        assert by_id[chain_keys.ids["child"]]["rerun"]["current_rules"]["violations"] == ["DEP-01"]
        assert by_id[chain_keys.ids["child"]]["rerun"]["recorded_rules"]["same_decision"] is True
        assert sum(f["code"] == "RULES_CHANGED" for f in report["findings"]) == 7

    def test_clean_task_passes(self, chain_keys: Chain, rules: gate.Constitution) -> None:
        """The clean task has no violation; its agent's refused audit call is on record."""
        with Ledger.open(chain_keys.db, create=False) as led:
            report = build_report(led, CLEAN_TASK, current=rules)
        assert report["summary"]["result"] == "pass"
        assert report["summary"]["hops"] == 1
        (action,) = report["tree"][0]["actions"]
        assert (action["name"], action["status"]) == ("ledger_audit_task", "error")
        assert "only its own delegations" in action["error"]


class TestMcpTool:
    def test_audit_task_returns_the_sealed_report(self, chain: Chain) -> None:
        """audit_task (called by the main agent during the run) returns the report and its hash."""
        envelope = chain.mcp_report
        assert set(envelope) == {"report", "report_sha256"}
        assert hashlib.sha256(canonical_bytes(envelope["report"])).hexdigest() == envelope["report_sha256"]
        assert envelope["report"]["scope"]["task_id"] == TASK
        assert envelope["report"]["summary"]["reruns"]["reproduced"] == 7
        # no checkpoint was signed while the engine ran: the audit says so
        assert "NO_CHECKPOINT" in {f["code"] for f in envelope["report"]["findings"]}

    def test_unknown_task_names_the_known_ones(self, chain: Chain) -> None:
        """An unknown task id is refused with the task ids the ledger holds."""
        assert "unknown task id 'no-such-task'" in chain.mcp_unknown_error
        assert TASK in chain.mcp_unknown_error
        assert CLEAN_TASK in chain.mcp_unknown_error


def test_seal_hash_is_over_canonical_bytes(envelope: dict[str, Any]) -> None:
    """report_sha256 is the SHA-256 of ledger.canonical_bytes(report)."""
    assert envelope["report_sha256"] == hashlib.sha256(canonical_bytes(envelope["report"])).hexdigest()
    assert seal(envelope["report"])["report_sha256"] == envelope["report_sha256"]
