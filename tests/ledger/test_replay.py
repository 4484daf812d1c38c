"""Specification of projections and replay: the live projection is the fold of the events, replay --check
names any drift by session and field, and replay repairs it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from ledger_support import append_all, fresh_ledger, raw_db
from strategies import Lifecycle, lifecycles

from ledger import Ledger
from ledger.projections import COUNTED_TYPES, COUNTERS, fold
from schemas.events import (
    AgentCompleted,
    AgentFailed,
    AgentSpawned,
    AgentStopped,
    BudgetExceeded,
    DelegationRevoked,
    Finding,
    GateDecided,
    MessageSent,
    OutputReceived,
    PermissionDecided,
    SessionAdopted,
    SessionInterrupted,
    Tokens,
    ToolCalled,
    Verdict,
)
from schemas.state import SessionState


def spawned(sid: str, parent: str | None = None, root: str | None = None, **extra: Any) -> AgentSpawned:
    return AgentSpawned(
        session_id=sid,
        task_id="task-1",
        role="coder",
        parent_session_id=parent,
        root_session_id=root or sid,
        depth=0 if parent is None else 1,
        principal=f"agent:{sid}",
        delegator="operator",
        **extra,
    )


def output(sid: str, tokens: int = 10, cost: float = 0.25, text: str = "out") -> OutputReceived:
    return OutputReceived(
        session_id=sid,
        text=text,
        tokens=Tokens(input=tokens, output=2 * tokens, reasoning=1, cache_read=1000),
        cost_usd=cost,
    )


def folded(led: Ledger) -> dict[str, SessionState]:
    states = fold((e.stream, e.type, e.data(), e.recorded_at_us) for e in led.entries())
    return {sid: SessionState.model_validate(st) for sid, st in states.items()}


def live(led: Ledger) -> dict[str, SessionState]:
    return {s.session_id: s for s in led.sessions()}


@pytest.fixture
def tree(ledger: Ledger) -> Ledger:
    """root -> (a -> a1, b), with outputs, tool calls and messages."""
    ledger.append("root", spawned("root", max_tokens=10_000, max_cost_usd=5.0))
    ledger.append("a", spawned("a", parent="root", root="root"))
    ledger.append("a1", spawned("a1", parent="a", root="root"))
    ledger.append("b", spawned("b", parent="root", root="root"))
    ledger.append("a1", output("a1", tokens=10, cost=0.5))
    ledger.append("a", output("a", tokens=100, cost=1.0))
    ledger.append("b", output("b", tokens=1, cost=0.125))
    ledger.append("a1", ToolCalled(session_id="a1", tool="bash", input={"cmd": "ls"}))
    ledger.append("a1", MessageSent(session_id="a1", text="go on"))
    return ledger


class TestLiveProjection:
    def test_spawn_links_children_to_parents(self, tree: Ledger) -> None:
        """A spawned session is running, knows its parent and root, and is listed among its parent's
        children."""
        s = live(tree)
        assert s["root"].children == ["a", "b"]
        assert s["a"].children == ["a1"]
        assert (s["a1"].parent_session_id, s["a1"].root_session_id, s["a1"].status) == (
            "a",
            "root",
            "running",
        )
        assert (s["root"].max_tokens, s["root"].max_cost_usd) == (10_000, 5.0)
        assert [x.session_id for x in tree.sessions(root_session_id="root")] != []
        assert {x.session_id for x in tree.sessions(root_session_id="root")} == {"root", "a", "a1", "b"}

    def test_outputs_roll_tokens_and_cost_up_to_every_ancestor(self, tree: Ledger) -> None:
        """Each output counts input+output+reasoning tokens and cost on its session and every ancestor's
        subtree."""
        s = live(tree)
        assert (s["a1"].tokens_used, s["a1"].subtree_tokens, s["a1"].cost_usd) == (31, 31, 0.5)
        assert (s["a"].tokens_used, s["a"].subtree_tokens) == (301, 332)
        assert s["a"].subtree_cost_usd == 1.5
        assert (s["root"].tokens_used, s["root"].subtree_tokens) == (0, 332 + 4)
        assert s["root"].subtree_cost_usd == 1.625
        assert s["a1"].last_output == "out"

    def test_counters(self, tree: Ledger) -> None:
        """Tool calls, messages and permission decisions (rejections apart) are counted per session."""
        tree.append(
            "a1", PermissionDecided(session_id="a1", permission="edit", reply="reject", reason="policy")
        )
        tree.append(
            "a1", PermissionDecided(session_id="a1", permission="edit", reply="once", reason="policy")
        )
        s = live(tree)["a1"]
        assert (s.tool_calls, s.messages, s.permissions_decided, s.permissions_rejected) == (1, 1, 2, 1)

    @pytest.mark.parametrize(
        ("event", "status", "reason"),
        [
            (AgentCompleted(session_id="b", summary="all done"), "completed", "all done"),
            (AgentStopped(session_id="b", reason="operator stop"), "stopped", "operator stop"),
            (AgentFailed(session_id="b", error="boom"), "failed", "boom"),
            (SessionInterrupted(session_id="b", reason="restart"), "interrupted", "restart"),
        ],
    )
    def test_terminal_events_end_a_session_once(
        self, tree: Ledger, event: Any, status: str, reason: str
    ) -> None:
        """A terminal event sets the status, end time and reason; a later terminal event does not change
        them."""
        tree.append("b", event)
        first = live(tree)["b"]
        assert (first.status, first.end_reason) == (status, reason)
        assert first.ended_at is not None
        tree.append("b", AgentFailed(session_id="b", error="late failure"))
        assert live(tree)["b"] == first.model_copy(update={"updated_at": live(tree)["b"].updated_at})

    def test_revocation_ends_the_subtree(self, tree: Ledger) -> None:
        """Revoking a session with its subtree marks each revoked; running ones end as revoked, ended ones
        keep
        their status."""
        tree.append("a1", AgentCompleted(session_id="a1"))
        tree.append(
            "a", DelegationRevoked(session_id="a", by="ops", reason="scope withdrawn", subtree=["a1"])
        )
        s = live(tree)
        assert (s["a"].status, s["a"].revoked) == ("revoked", True)
        assert s["a"].end_reason == "revoked by ops: scope withdrawn"
        assert (s["a1"].status, s["a1"].revoked) == ("completed", True)
        assert (s["b"].status, s["b"].revoked, s["root"].status) == ("running", False, "running")

    def test_budget_overrun_is_recorded(self, tree: Ledger) -> None:
        """A budget overrun records which limit, how much was used and allowed."""
        tree.append(
            "a", BudgetExceeded(session_id="a", limit="tokens", allowed=100, used=332, charged_to="a")
        )
        assert live(tree)["a"].end_reason == "budget exceeded: tokens used 332.0 of 100.0"

    def test_gate_decision_queues_an_approved_delegation(self, ledger: Ledger) -> None:
        """An approved gate decision creates a queued session (rooted at its parent's root); a refusal creates
        none;
        the spawn then makes it running."""
        ledger.append("p", spawned("p"))
        ok = Verdict(decision="approved", profile="standard", ruleset_hash="h")
        no = Verdict(
            decision="rejected",
            profile="standard",
            ruleset_hash="h",
            violations=[Finding(rule="R", severity="error", hop=0, path="x", message="no")],
        )
        ledger.append("c", GateDecided(verdict=ok, task_id="t", role="coder", parent_session_id="p", depth=1))
        ledger.append("r", GateDecided(verdict=no, task_id="t", role="coder"))
        c = ledger.session("c")
        assert c is not None
        assert (c.status, c.root_session_id, c.depth) == ("queued", "p", 1)
        assert ledger.session("r") is None
        ledger.append("c", spawned("c", parent="p", root="p"))
        c = ledger.session("c")
        assert c is not None
        assert c.status == "running"
        assert {x.session_id for x in ledger.sessions(statuses=["running"])} == {"p", "c"}


class TestReplay:
    def test_replay_equals_the_live_projection(self, tree: Ledger) -> None:
        """Folding every event again gives exactly the live projection, and replay --check reports no
        drift."""
        assert folded(tree) == live(tree)
        report = tree.replay(check=True)
        assert report.ok
        assert report.checked
        assert (report.events, report.sessions) == (9, 4)

    @pytest.mark.parametrize(
        ("sql", "sid", "field"),
        [
            (
                "UPDATE sessions SET state = json_set(state, '$.tokens_used', 999) WHERE session_id = 'a'",
                "a",
                "tokens_used",
            ),
            (
                "UPDATE sessions SET state = json_set(state, '$.status', 'completed') WHERE session_id = 'b'",
                "b",
                "status",
            ),
            (
                "UPDATE sessions SET state = json_set(state, '$.children', json('[]')) "
                "WHERE session_id = 'root'",
                "root",
                "children",
            ),
            (
                "UPDATE sessions SET state = json_remove(state, '$.subtree_cost_usd') "
                "WHERE session_id = 'a1'",
                "a1",
                "subtree_cost_usd",
            ),
        ],
    )
    def test_check_names_the_drifted_session_and_field(
        self, tree: Ledger, sql: str, sid: str, field: str
    ) -> None:
        """An edited projection is reported by replay --check with the session, the field, and both values;
        check changes nothing, replay repairs it."""
        before = live(tree)
        with raw_db(tree) as conn:
            conn.execute(sql)
        report = tree.replay(check=True)
        assert not report.ok
        assert [(d["session_id"], d["field"], d["problem"]) for d in report.drift] == [
            (sid, field, "differs")
        ]
        assert sid in report.drift[0]["message"]
        assert field in report.drift[0]["message"]
        assert report.drift[0]["expected"] == before[sid].model_dump()[field]
        assert not tree.replay(check=True).ok  # checking does not repair
        repaired = tree.replay()
        assert repaired.sessions == 4
        assert tree.replay(check=True).ok
        assert live(tree) == before

    def test_check_reports_missing_and_unknown_sessions(self, tree: Ledger) -> None:
        """A deleted projection row is reported as missing, an invented one as stored_only."""
        with raw_db(tree) as conn:
            conn.execute("DELETE FROM sessions WHERE session_id = 'b'")
            conn.execute(
                "INSERT INTO sessions SELECT 'ghost', task_id, status, NULL, 'ghost', NULL, updated_seq, "
                "json_set(state, '$.session_id', 'ghost') FROM sessions WHERE session_id = 'a'"
            )
        report = tree.replay(check=True)
        assert {(d["session_id"], d["problem"]) for d in report.drift} == {
            ("b", "missing"),
            ("ghost", "stored_only"),
        }
        tree.replay()
        assert tree.replay(check=True).ok
        assert tree.session("ghost") is None
        assert tree.session("b") is not None

    def test_check_sees_a_drifted_query_column(self, tree: Ledger) -> None:
        """A status edited only in the indexed column used by queries (not in the state) is reported as
        drift."""
        with raw_db(tree) as conn:
            conn.execute("UPDATE sessions SET status = 'completed' WHERE session_id = 'b'")
        assert [s.session_id for s in tree.sessions(statuses=["completed"])] == ["b"]
        report = tree.replay(check=True)
        assert [(d["session_id"], d["field"], d["problem"]) for d in report.drift] == [
            ("b", "status", "column_differs")
        ]
        assert (report.drift[0]["expected"], report.drift[0]["actual"]) == ("running", "completed")
        tree.replay()
        assert tree.sessions(statuses=["completed"]) == []

    def test_appends_after_repair_follow_the_repaired_state(self, tree: Ledger) -> None:
        """After replay repairs a drifted projection, new events build on the repaired state."""
        with raw_db(tree) as conn:
            conn.execute(
                "UPDATE sessions SET state = json_set(state, '$.tokens_used', 999) WHERE session_id = 'b'"
            )
        tree.append("b", output("b", tokens=1))  # folded onto the drifted state
        tree.replay()
        tree.append("b", output("b", tokens=1))
        b = tree.session("b")
        assert b is not None
        assert b.tokens_used == 4 + 4 + 4
        assert tree.replay(check=True).ok


class TestReplayProperties:
    @given(lifecycles())
    def test_fold_of_events_equals_the_live_projection(self, life: Lifecycle) -> None:
        """For any lifecycle (nested spawns, outputs with tokens and cost, tool calls, terminal events,
        subtree revocations, adoptions by another engine), folding the stored events equals the live
        projection, and replay --check is clean."""
        with fresh_ledger() as led:
            append_all(led, life.steps)
            current = live(led)
            assert folded(led) == current
            assert set(current) == set(life.spawned)
            for sid in life.spawned:
                assert (
                    current[sid].status in ("completed", "stopped", "failed", "interrupted", "revoked")
                ) == (sid in life.terminal), sid
                adopted = [e.engine for s, e in life.steps if s == sid and isinstance(e, SessionAdopted)]
                assert current[sid].engine == (adopted[-1] if adopted else None), sid
            report = led.replay(check=True)
            assert report.ok, report.drift
            led.replay()
            assert live(led) == current

    @given(lifecycles())
    def test_counted_types_change_only_counters(self, life: Lifecycle) -> None:
        """Folding without the COUNTED_TYPES events (as the audit does) changes the counters and
        `updated_at` of the sessions, and nothing else: what readers that skip them rely on."""
        with fresh_ledger() as led:
            append_all(led, life.steps)
            events = [(e.stream, e.type, e.data(), e.recorded_at_us) for e in led.entries()]
        whole = fold(events)
        skipped = fold(e for e in events if e[1] not in COUNTED_TYPES)
        assert set(whole) == set(skipped)
        for sid, state in whole.items():
            other = skipped[sid]
            assert {k: v for k, v in state.items() if k not in COUNTERS} == {
                k: v for k, v in other.items() if k not in COUNTERS
            }, sid

    @given(lifecycles(max_sessions=4, max_ops=12))
    def test_group_committed_appends_project_like_single_ones(self, life: Lifecycle) -> None:
        """Appending a lifecycle in one batch gives the same projection as appending it event by event."""
        with fresh_ledger() as one, fresh_ledger() as many:
            append_all(one, life.steps)
            many.append_many(life.steps)
            strip = {"created_at", "updated_at", "ended_at"}
            assert {k: v.model_dump(exclude=strip) for k, v in live(one).items()} == {
                k: v.model_dump(exclude=strip) for k, v in live(many).items()
            }
            assert many.replay(check=True).ok


def test_revoked_sessions_reads_the_projection(ledger: Ledger) -> None:
    """revoked_sessions() names every session a revocation reached, and no other."""
    from schemas.events import AgentSpawned, DelegationRevoked

    for sid, parent in (("r", None), ("c", "r"), ("other", None)):
        ledger.append(
            sid,
            AgentSpawned(
                session_id=sid,
                task_id="t",
                role="x",
                parent_session_id=parent,
                root_session_id=parent or sid,
                principal=sid,
                delegator="pm",
            ),
        )
    assert ledger.revoked_sessions() == frozenset()
    ledger.append("r", DelegationRevoked(session_id="r", by="ops", reason="stop", subtree=["c"]))
    assert ledger.revoked_sessions() == frozenset({"r", "c"})
