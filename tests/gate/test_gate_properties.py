"""Properties: scope coverage is a sound pre-order, and no mutation of a request breaks or fools the gate."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gate import covers, evaluate, matches
from gate.scopes import ScopeSet
from schemas.events import GateDecided, Verdict
from schemas.responsibility import DelegationContext
from tests.gate.gate_builders import NOW, context, findings, hops, judge_chain, violated, virtual_constitution
from tests.gate.gate_strategies import chains, instances, mutated, narrowings, rivals, scopes, widenings

RULES = virtual_constitution()
STRICT = virtual_constitution(profile="strict")
MANY = settings(max_examples=max(200, settings.default.max_examples))
SOME = settings(max_examples=max(100, settings.default.max_examples))


class TestScopeCoverage:
    @MANY
    @given(scopes())
    def test_generated_scopes_are_valid_and_reflexive(self, scope: str) -> None:
        """Every generated scope passes schemas.Scope and covers itself."""
        DelegationContext.model_validate(
            {
                "delegator": "a",
                "delegator_cap": "b",
                "delegated_to": "c",
                "delegated_cap": "d",
                "constraints": [],
                "phantom_level": "x",
                "delegated_at": "2025-10-01T08:00:00Z",
                "scopes": [scope],
            }
        )
        assert covers(scope, scope)

    @MANY
    @given(st.data())
    def test_instances_match_their_pattern(self, data: st.DataObject) -> None:
        """A concrete instance drawn from a pattern is matched by it."""
        scope = data.draw(scopes())
        assert matches(scope, data.draw(instances(scope)))

    @MANY
    @given(st.data())
    def test_narrowings_are_covered_transitively(self, data: st.DataObject) -> None:
        """a covers narrow(a), which covers narrow(narrow(a)), and a covers that too."""
        a = data.draw(scopes())
        b = data.draw(narrowings(a))
        c = data.draw(narrowings(b))
        assert covers(a, b)
        assert covers(b, c)
        assert covers(a, c)

    @MANY
    @given(scopes(), scopes(), scopes())
    def test_transitive_on_arbitrary_scopes(self, a: str, b: str, c: str) -> None:
        """Whenever a covers b and b covers c, a covers c."""
        if covers(a, b) and covers(b, c):
            assert covers(a, c)

    @MANY
    @given(st.data())
    def test_coverage_never_accepts_an_escalation(self, data: st.DataObject) -> None:
        """If parent covers child, every concrete scope child matches is matched by parent (sampled)."""
        parent = data.draw(scopes())
        child = data.draw(st.one_of(scopes(), narrowings(parent), rivals(parent)))
        if covers(parent, child):
            for _ in range(5):
                concrete = data.draw(instances(child))
                assert matches(parent, concrete), (parent, child, concrete)

    @MANY
    @given(st.data())
    def test_widening_is_never_covered(self, data: st.DataObject) -> None:
        """A scope that matches something its original does not is never covered by the original."""
        scope = data.draw(scopes())
        wider, witness = data.draw(widenings(scope))
        assume(not matches(scope, witness))
        assert matches(wider, witness)
        assert not covers(scope, wider)

    @MANY
    @given(st.data())
    def test_compiled_set_agrees_with_pairwise_coverage(self, data: st.DataObject) -> None:
        """ScopeSet.covering (a trie, memoised) finds a cover exactly when some scope covers pairwise."""
        parents = data.draw(st.lists(scopes(), min_size=1, max_size=6))
        compiled = ScopeSet(parents)
        children = data.draw(
            st.lists(
                st.one_of(
                    scopes(),
                    st.sampled_from(parents).flatmap(narrowings),
                    st.sampled_from(parents).flatmap(rivals),
                ),
                min_size=1,
                max_size=6,
            )
        )
        for child in [*children, *children]:  # the second pass answers from the memo
            found = compiled.covering(child)
            assert (found is not None) == any(covers(p, child) for p in parents), child
            assert found is None or covers(found, child)


class TestRequestMutations:
    @SOME
    @given(chains())
    def test_sound_chains_are_approved(self, requests: list[dict[str, Any]]) -> None:
        """A generated chain that restates scopes and constraints hop by hop is approved."""
        verdict = judge_chain(requests, RULES)
        assert verdict.decision == "approved", verdict.violations

    @MANY
    @given(st.data())
    def test_widened_scope_is_always_refused(self, data: st.DataObject) -> None:
        """Widening any scope of the newest hop beyond its parent's is refused by ATT-01 at that scope."""
        requests = data.draw(chains())
        ctx = requests[-1]["delegation_context"]
        index = data.draw(st.integers(0, len(ctx["scopes"]) - 1))
        wider, witness = data.draw(widenings(ctx["scopes"][index]))
        reference = requests[0]["cap_origin"]["scopes"]  # every hop restates the grant
        assume(not any(matches(scope, witness) for scope in reference))
        ctx["scopes"][index] = wider
        verdict = judge_chain(requests, RULES)
        assert ("ATT-01", f"delegation_context.scopes[{index}]") in violated(verdict)

    @MANY
    @given(st.data())
    def test_dropped_constraint_is_always_refused(self, data: st.DataObject) -> None:
        """Dropping any inherited constraint is refused by CON-01."""
        requests = data.draw(chains(min_depth=1))
        constraints = requests[-1]["delegation_context"]["constraints"]
        dropped = constraints.pop(data.draw(st.integers(0, len(constraints) - 1)))
        verdict = judge_chain(requests, RULES)
        assert ("CON-01", "delegation_context.constraints") in violated(verdict)
        assert dropped in [f.expected for f in findings(verdict, "CON-01")]

    @MANY
    @given(st.data())
    def test_repeated_principal_is_always_refused(self, data: st.DataObject) -> None:
        """Delegating to a principal already on the path is refused (CYC-01, or ID-04 for the delegator)."""
        requests = data.draw(chains())
        earlier = ["project_manager", *(r["role"] for r in requests[:-1])]
        name = data.draw(st.sampled_from(earlier))
        requests[-1]["role"] = requests[-1]["delegation_context"]["delegated_to"] = name
        verdict = judge_chain(requests, RULES)
        assert {"CYC-01", "ID-04"} & {f.rule for f in verdict.violations}

    @settings(max_examples=max(300, settings.default.max_examples))
    @given(st.data())
    def test_any_mutation_yields_a_recordable_verdict(self, data: st.DataObject) -> None:
        """Random mutations never raise: the gate returns a Verdict the ledger can record canonically."""
        requests = data.draw(chains())
        request = data.draw(mutated(requests))
        rules = data.draw(st.sampled_from([RULES, STRICT]))
        verdict = evaluate(request, context(hops(requests[:-1])), NOW, rules)
        assert isinstance(verdict, Verdict)
        assert rfc8785.dumps(GateDecided(verdict=verdict).model_dump(mode="json"))
        for finding in [*verdict.violations, *verdict.warnings]:
            assert "could not be" not in finding.message, finding
