"""The gate's public surface: exports, the rule registry, composition, verdict shape, failing closed."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import rfc8785

import gate
from gate import RULES, ChainContext, Constitution, ContextError, Gate, Rule, RuleSetError, evaluate, rule
from gate.subject import Subject
from schemas.events import Finding, GateDecided, Verdict
from tests.gate.gate_builders import (
    NOW,
    chain_of,
    context,
    delegate,
    findings,
    virtual_constitution,
    virtual_request,
)

GATE_DIR = Path(gate.__file__).parent
ALL_IDS = [
    "SCH-01",
    "SCH-02",
    "ID-01",
    "ID-02",
    "ID-03",
    "ID-04",
    "TIME-01",
    "TIME-02",
    "TIME-03",
    "CHN-01",
    "CHN-02",
    "CHN-03",
    "ATT-01",
    "ATT-02",
    "CON-01",
    "DEP-01",
    "CYC-01",
    "REV-01",
    "BUD-01",
    "DIR-01",
    "ROLE-01",
    "MOD-01",
]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


class TestPublicSurface:
    def test_all_is_sorted(self) -> None:
        """gate.__all__ is sorted (constants, classes, functions) and names only what exists."""
        assert gate.__all__ == sorted(gate.__all__, key=_isort_key)
        for name in gate.__all__:
            assert hasattr(gate, name), name

    def test_gate_imports_only_schemas_stdlib_pydantic_rfc8785(self) -> None:
        """Every module of gate/ imports nothing but gate, schemas, the stdlib, pydantic and rfc8785."""
        allowed = {"gate", "schemas", "pydantic", "pydantic_core", "rfc8785"}
        for path in GATE_DIR.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"

    def test_gate_does_no_io(self) -> None:
        """No module of gate/ opens files, reads the clock, or touches processes and sockets."""
        forbidden = {
            "open",
            "now",
            "utcnow",
            "today",
            "time",
            "time_ns",
            "realpath",
            "exists",
            "isdir",
            "stat",
        }
        banned_modules = {"socket", "subprocess", "pathlib", "urllib", "http", "time"}
        for path in GATE_DIR.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    assert name not in forbidden, f"{path.name}:{node.lineno} calls {name}"
                if isinstance(node, ast.Import | ast.ImportFrom):
                    mods = (
                        [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    )
                    for mod in mods:
                        assert mod.split(".")[0] not in banned_modules, f"{path.name} imports {mod}"

    def test_modules_stay_small(self) -> None:
        """No module of gate/ grows past a few hundred lines (it would be holding two things)."""
        for path in GATE_DIR.rglob("*.py"):
            assert len(path.read_text(encoding="utf-8").splitlines()) <= 400, path.name

    def test_errors_docstring_draws_the_tree(self) -> None:
        """gate.errors documents its exception tree, and the classes follow it."""
        errors = importlib.import_module("gate.errors")
        for name in ("GateError", "ConstitutionError", "RuleSetError", "ContextError"):
            assert name in (errors.__doc__ or "")
            assert issubclass(getattr(errors, name), errors.GateError)


class TestRegistry:
    def test_every_rule_is_registered_once_in_order(self) -> None:
        """RULES holds one object per rule id of GATE_RULES.md (plus MOD-01), in reporting order."""
        assert [r.id for r in RULES] == ALL_IDS

    def test_rules_have_a_one_line_summary(self) -> None:
        """Each rule has a one-line summary for `ledger gate rules`."""
        for r in RULES:
            assert r.summary, r.id
            assert "\n" not in r.summary, r.id
            assert len(r.summary) <= 110, r.id
            assert callable(r.check)

    def test_rule_lookup(self) -> None:
        """rule(id) returns the registered rule; an unknown id names the known ones."""
        assert rule("CYC-01").id == "CYC-01"
        with pytest.raises(KeyError, match="SCH-01"):
            rule("NOPE-01")


class TestGateComposition:
    def test_empty_rule_set_is_refused(self) -> None:
        """A Gate without rules would approve everything: construction raises RuleSetError."""
        with pytest.raises(RuleSetError, match="at least one rule"):
            Gate([])

    def test_repeated_rule_id_is_refused(self) -> None:
        """Two rules sharing an id cannot be composed."""
        with pytest.raises(RuleSetError, match="CYC-01"):
            Gate([rule("CYC-01"), rule("CYC-01")])

    def test_subset_gate_runs_only_its_rules(self) -> None:
        """A Gate of one rule reports that rule's findings only."""
        request = virtual_request()
        request["original_task"]["requester"] = "Mallory"
        request["task_id"] = "other"
        verdict = Gate([rule("ID-01")]).evaluate(request, context(), NOW, virtual_constitution())
        assert [f.rule for f in verdict.violations] == ["ID-01"]

    def test_broken_rule_fails_closed(self) -> None:
        """A rule that raises produces a violation under its id instead of an exception or an approval."""

        class Broken(Rule):
            id: ClassVar[str] = "X-01"
            summary: ClassVar[str] = "always breaks"

            def check(self, subject: Subject) -> list[Finding]:
                raise RuntimeError("boom")

        verdict = Gate([Broken()]).evaluate(virtual_request(), context(), NOW, virtual_constitution())
        assert verdict.decision == "rejected"
        assert verdict.violations[0].rule == "X-01"
        assert "fails closed" in verdict.violations[0].message


class TestVerdict:
    def test_verdict_records_profile_hash_and_ledger_head(self) -> None:
        """The verdict names the profile, the ruleset hash and the ledger head it was taken against."""
        rules = virtual_constitution()
        verdict = evaluate(virtual_request(), context(ledger_head="sha256:abc"), NOW, rules)
        assert verdict.profile == "default"
        assert verdict.ruleset_hash == rules.ruleset_hash
        assert verdict.ledger_head == "sha256:abc"

    def test_verdict_fits_the_gate_decided_event_and_is_canonical_json(self) -> None:
        """A verdict, even a rejected one with odd values, can be recorded as a GateDecided event."""
        request = virtual_request()
        request["delegation_context"]["delegated_too"] = {"x": [1.5, None, 2**60]}
        request["task_id"] = 7
        verdict = evaluate(request, context(), NOW, virtual_constitution())
        assert verdict.decision == "rejected"
        payload = GateDecided(verdict=verdict).model_dump(mode="json")
        assert rfc8785.dumps(payload)
        assert Verdict.model_validate(json.loads(json.dumps(payload["verdict"]))) == verdict

    def test_findings_carry_every_field(self) -> None:
        """Each finding has rule, severity, hop, path, message, expected and actual."""
        request = virtual_request()
        request["original_task"]["requester"] = "Mallory"
        (finding,) = evaluate(request, context(), NOW, virtual_constitution()).violations
        assert finding.model_dump() == {
            "rule": "ID-01",
            "severity": "error",
            "hop": 0,
            "path": "original_task.requester",
            "message": "original_task.requester ('Mallory') is not cap_origin.ultimate_authority ('Auctor'): "
            "the task must be requested by the authority that granted it",
            "expected": "Auctor",
            "actual": "Mallory",
        }

    def test_all_violations_are_reported_at_once(self) -> None:
        """Independent problems in one request are all reported, not only the first."""
        request = virtual_request()
        request["original_task"]["requester"] = "Mallory"
        request["task_id"] = "other"
        request["delegation_context"]["delegator"] = "backend_specialist"
        request["model"] = "gpt-x"
        rules = virtual_constitution(allowed_models=["claude-*"], max_depth=0)
        verdict = evaluate(request, context(known_roles={"tester"}), NOW, rules)
        assert {f.rule for f in verdict.violations} == {"ID-01", "ID-02", "ID-04", "ROLE-01", "MOD-01"}


class TestCallerMistakes:
    @pytest.mark.parametrize(
        "arguments",
        [
            pytest.param({"now": dt.datetime(2025, 10, 1, 9, 0)}, id="naive-now"),
            pytest.param({"now": "2025-10-01T09:00:00Z"}, id="string-now"),
            pytest.param({"chain": {"parents": []}}, id="dict-chain"),
            pytest.param({"constitution": {"profile": "default"}}, id="dict-constitution"),
        ],
    )
    def test_caller_mistakes_raise_context_error(self, arguments: dict[str, Any]) -> None:
        """A programming error of the engine raises ContextError (bad requests never raise)."""
        call: dict[str, Any] = {
            "request": virtual_request(),
            "chain": context(),
            "now": NOW,
            "constitution": virtual_constitution(),
        }
        call.update(arguments)
        with pytest.raises(ContextError):
            evaluate(**call)

    def test_chain_context_checks_its_parents(self) -> None:
        """ChainContext refuses parents that are not Hops, and stores collections immutably."""
        with pytest.raises(ContextError, match="parents\\[0\\]"):
            ChainContext(parents=[virtual_request()])  # type: ignore[list-item]
        ctx = ChainContext(parents=[], revoked_sessions=["a"], known_roles=["tester"])  # type: ignore[arg-type]
        assert ctx.parents == ()
        assert ctx.revoked_sessions == frozenset({"a"})
        assert ctx.known_roles == frozenset({"tester"})
        with pytest.raises(ContextError, match="not a string"):
            ChainContext(known_roles="tester")  # type: ignore[arg-type]

    def test_hop_role_defaults_to_the_request_and_must_agree(self) -> None:
        """Hop.role is the request's role unless given; a different role is a ContextError."""
        request = gate.Hop.from_request("s0", virtual_request()).request
        assert gate.Hop("s0", request).role == "backend_specialist"
        assert gate.Hop("s0", request, role="backend_specialist").role == "backend_specialist"
        with pytest.raises(ContextError, match="not the role of its request"):
            gate.Hop("s0", request, role="tester")

    def test_hop_from_invalid_request_is_a_context_error(self) -> None:
        """A recorded request that no longer validates cannot become a Hop."""
        with pytest.raises(ContextError, match="session 's0'"):
            gate.Hop.from_request("s0", {"role": "x"})


def test_ruleset_hash_is_sha256_of_canonical_constitution() -> None:
    """ruleset_hash = sha256 over RFC 8785 JSON of the normalised constitution and the rules version."""
    rules = Constitution()
    document = {"rules_version": gate.RULES_VERSION, **rules.model_dump(mode="json")}
    assert rules.ruleset_hash == "sha256:" + hashlib.sha256(rfc8785.dumps(document)).hexdigest()
    assert findings(evaluate(virtual_request(), context(), NOW, virtual_constitution()), "ATT-02")


def _variants() -> list[tuple[str, list[dict[str, Any]]]]:
    """Chains (root first) whose last request is valid JSON-wise but breaks rules, or none."""
    base = virtual_request()
    requester = json.loads(json.dumps(base))
    requester["original_task"]["requester"] = "someone else"
    self_delegation = json.loads(json.dumps(base))
    self_delegation["delegation_context"]["delegator"] = self_delegation["delegation_context"]["delegated_to"]
    expired = json.loads(json.dumps(base))
    expired["delegation_context"]["expires_at"] = "2025-10-01T08:06:00Z"  # before NOW: TIME-03
    chain = chain_of(base, ["tester", "reviewer"])
    back = delegate(chain[-1], "backend_specialist")  # hands work back up the chain: CYC-01
    impostor = delegate(chain[-1], "documenter", delegator="project_manager")  # not the parent's delegate
    return [
        ("fixture", [base]),
        ("requester", [requester]),
        ("self_delegation", [self_delegation]),
        ("expired", [expired]),
        ("chain", chain),
        ("cycle", [*chain, back]),
        ("impostor", [*chain, impostor]),
    ]


@pytest.mark.parametrize(("name", "chain"), _variants(), ids=[n for n, _ in _variants()])
def test_a_validated_request_is_judged_as_its_raw_form(name: str, chain: list[dict[str, Any]]) -> None:
    """gate.evaluate of a SpawnRequest validated from a raw request gives that raw request's verdict
    (an audit re-run hands it the models it validated once), refusals included."""
    from pydantic import ValidationError

    from schemas.requests import SpawnRequest
    from tests.gate.gate_builders import hops

    rules = virtual_constitution()
    ctx = context(hops(chain[:-1]))
    raw = chain[-1]
    try:
        model = SpawnRequest.model_validate(raw)
    except ValidationError:
        pytest.fail(f"variant {name} should be a valid request")
    assert evaluate(model, ctx, NOW, rules) == evaluate(raw, ctx, NOW, rules)
    if name in ("requester", "self_delegation", "expired", "cycle", "impostor"):
        assert evaluate(model, ctx, NOW, rules).decision == "rejected"
