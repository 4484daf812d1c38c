"""The audit's work on the second core (engine/audit/forked.py) and its shortcuts give the report the
plain sequential audit gives: same bytes (a tampered ledger included), same re-runs."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from audit_support import TASK, Chain

import gate
from engine.audit import build_report, forked, helper
from engine.audit import report as report_module
from engine.audit.canonical import fast_canonical, number
from engine.audit.hops import _coverage
from engine.audit.scan import Ev
from ledger import Ledger, canonical_bytes

NOW = datetime(2030, 1, 1, tzinfo=UTC)
Hops = Any


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The re-run child is forked here whatever threads the test session left behind (they are idle),
    for any number of re-runs; returns one entry per child started."""
    monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    monkeypatch.setattr(helper, "FORK_MIN_RERUNS", 1)
    monkeypatch.setattr(helper, "FORK_MIN_ENTRIES", 1)
    kinds: list[str] = []
    real_start = forked.Child.start

    def start(work: Any, **kwargs: Any) -> forked.Child | None:
        child = real_start(work, **kwargs)
        if child is not None:
            kinds.append("helper")
        return child

    monkeypatch.setattr(forked.Child, "start", staticmethod(start))
    return kinds


def _audit(db: Path, rules: gate.Constitution, task: str = TASK) -> dict[str, Any]:
    with Ledger.open(db, create=False) as led:
        return build_report(led, task, current=rules, now=NOW)


def _serial(db: Path, rules: gate.Constitution, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with monkeypatch.context() as m:
        m.setenv("LEDGER_AUDIT_FORK", "0")
        m.setattr(forked, "can_fork", lambda: False)
        return _audit(db, rules)


class TestForked:
    def test_forked_report_is_the_serial_report(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A share of the re-runs in a child: the same canonical bytes."""
        parallel = _audit(chain_keys.db, rules)
        assert started == ["helper"]
        serial = _serial(chain_keys.db, rules, monkeypatch)
        assert canonical_bytes(parallel) == canonical_bytes(serial)
        assert parallel["ledger"]["verify"]["ok"] is True
        assert parallel["summary"]["reruns"]["reproduced"] == 7

    def test_a_failed_child_is_done_here(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A child that answers nothing (crashed, killed) costs time, never content."""
        monkeypatch.setattr(forked.Child, "result", lambda self: None)
        parallel = _audit(chain_keys.db, rules)
        assert started == ["helper"]
        assert canonical_bytes(parallel) == canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))

    def test_a_hurried_helper_answers_what_it_did(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Told to hurry after every re-run, the helper answers the first of its share only; this
        process re-runs the others: the same bytes."""
        monkeypatch.setattr(helper, "HURRY_BATCH", 1)
        monkeypatch.setattr(helper, "CHILD_SHARE", 1.0)
        done: list[int] = []
        real_job = helper._rerun_job

        def job(*args: Any) -> list[dict[str, Any]]:
            out = real_job(args[0], args[1], lambda: True)
            done.append(len(out))
            return out

        monkeypatch.setattr(helper, "_rerun_job", job)
        real_result = helper.Helper.result
        answered: list[int] = []

        def result(self: helper.Helper) -> Any:
            verify, reruns = real_result(self)
            answered.append(-1 if reruns is None else len(reruns))
            return verify, reruns

        monkeypatch.setattr(helper.Helper, "result", result)
        parallel = _audit(chain_keys.db, rules)
        assert started == ["helper"]
        assert answered == [1]  # one of the seven decisions: the rest were re-run here
        assert canonical_bytes(parallel) == canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))

    def test_an_input_too_large_for_the_inbox_is_done_here(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(helper, "INBOX_BYTES", 16)
        sent: list[bool] = []
        real_send = helper.Helper.send

        def send(self: helper.Helper, *args: Any) -> bool:
            sent.append(real_send(self, *args))
            return sent[-1]

        monkeypatch.setattr(helper.Helper, "send", send)
        parallel = _audit(chain_keys.db, rules)
        assert started == ["helper"]
        assert sent == [False]
        assert canonical_bytes(parallel) == canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))

    def test_child_receives_its_input(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A child with an inbox gets the one object sent, and sees when it is hurried."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")

        def work(receive: Any, hurried: Any) -> tuple[Any, bool]:
            got = receive()
            while not hurried():  # killed past its allowance if `hurry` never reached it
                __import__("time").sleep(0.001)
            return got, True

        child = forked.Child.start(work, inbox=1 << 16, allowance_s=5.0)
        if child is None:
            pytest.skip("no fork on this system")
        assert child.send({"streams": ["a", "b"], "n": 2.5})
        assert not child.send("twice")  # one input only
        child.hurry()
        assert child.result() == ({"streams": ["a", "b"], "n": 2.5}, True)

    def test_no_inbox_no_child(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where the inbox cannot be mapped, no child is forked (the audit works alone)."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")

        def refused(*args: Any) -> None:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(forked.mmap, "mmap", refused)
        assert forked.Child.start(lambda receive, hurried: 1, inbox=1 << 30) is None

    def test_child_told_nothing_receives_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        child = forked.Child.start(lambda receive, hurried: receive(), inbox=1 << 16, allowance_s=5.0)
        if child is None:
            pytest.skip("no fork on this system")
        assert child.result() is None  # closed unsent: the child's receive() says None

    def test_child_that_never_answers_is_killed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A child stuck past its allowance is killed and reported as failed (the caller then works)."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        child = forked.Child.start(lambda: __import__("time").sleep(30), allowance_s=0.2)
        if child is None:
            pytest.skip("no fork on this system")
        assert child.result() is None

    def test_a_failing_audit_kills_and_reaps_its_child(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An error while the child re-runs: the error surfaces, the child is killed and reaped."""
        children: list[forked.Child] = []
        real_close = forked.Child.close

        def close(self: forked.Child) -> None:
            children.append(self)
            real_close(self)

        def broken(*args: Any) -> dict[str, Any]:
            raise RuntimeError("hop building failed")

        monkeypatch.setattr(forked.Child, "close", close)
        monkeypatch.setattr(report_module, "hop_node", broken)
        with pytest.raises(RuntimeError, match="hop building failed"):
            _audit(chain_keys.db, rules)
        assert started == ["helper"]
        (child,) = children
        with pytest.raises(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)  # already reaped

    def test_child_answers_its_work(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        child = forked.Child.start(lambda: {"answer": [1, 2.5, "x"]})
        if child is None:
            pytest.skip("no fork on this system")
        assert child.result() == {"answer": [1, 2.5, "x"]}
        assert child.result() == {"answer": [1, 2.5, "x"]}  # asked twice: the same answer

    def test_tampered_ledger_is_reported_alike(
        self,
        chain_keys: Chain,
        rules: gate.Constitution,
        tmp_path: Path,
        started: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A tampered ledger: the same verify result and the same report, with or without the child."""
        db = chain_keys.copy_to(tmp_path / "copy")
        conn = sqlite3.connect(db)
        seq, payload = conn.execute(
            "SELECT seq, payload FROM entries WHERE type = 'tool.called' LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE entries SET payload = ? WHERE seq = ?",
            (payload.replace(b'"tool":"', b'"tool":"x', 1), seq),
        )
        conn.commit()
        conn.close()
        parallel = _audit(db, rules)
        assert started == ["helper"]
        serial = _serial(db, rules, monkeypatch)
        assert parallel["ledger"]["verify"] == serial["ledger"]["verify"]
        assert parallel["ledger"]["verify"]["first_bad_seq"] == seq
        assert canonical_bytes(parallel) == canonical_bytes(serial)

    def test_fork_switch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """LEDGER_AUDIT_FORK=0 never forks; =1 forks whatever the load (where it is safe)."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "0")
        assert forked.Child.start(lambda: 1) is None
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        monkeypatch.setattr(forked.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
        idle = all(t is threading.main_thread() or t.name == "ledger-writer" for t in threading.enumerate())
        assert forked.can_fork() is idle
        monkeypatch.delenv("LEDGER_AUDIT_FORK")
        assert forked.can_fork() is False  # automatic: no idle core at a load of 99


class TestOneEvaluation:
    def test_same_rules_one_evaluation(self, report: dict[str, Any], hops: Hops) -> None:
        """Recorded rules = current rules (same hash): one evaluation answers both, and says so."""
        for hop in hops(report).values():
            r = hop["rerun"]
            assert r["one_evaluation"] is True
            assert r["current_rules"] == r["recorded_rules"]
        assert not [f for f in report["findings"] if f["code"] == "RULES_CHANGED"]

    def test_other_rules_are_evaluated_apart(self, chain_keys: Chain, hops: Hops) -> None:
        """Current rules with another hash: each decision is judged twice, differences flagged."""
        other = gate.load_constitution(
            chain_keys.constitution.read_text().replace("max_depth = 3", "max_depth = 1")
        )
        report = _audit(chain_keys.db, other)
        by_id = hops(report)
        child, back = by_id[chain_keys.ids["child"]]["rerun"], by_id[chain_keys.ids["back"]]["rerun"]
        for r in (child, back):
            assert r["one_evaluation"] is False
            assert r["current_rules"]["ruleset_hash"] == other.ruleset_hash
            assert r["recorded_rules"]["ruleset_hash"] != other.ruleset_hash
        # C (depth 1) is still allowed; the hand-back (depth 2) was refused and now is refused twice over
        assert child["current_rules"]["same_decision"] is True
        assert "DEP-01" in back["current_rules"]["violations"]
        assert "DEP-01" not in back["recorded_rules"]["violations"]
        assert back["recorded_rules"]["same_findings"] is True
        assert sum(f["code"] == "RULES_CHANGED" for f in report["findings"]) == 7


class TestCoverage:
    SPAWNED = Ev(1, "s", "agent.spawned", 0, b"\0" * 32, {})
    RULES: ClassVar[dict[str, Any]] = {
        "read": {"*": "allow", "*.env": "deny", "*.env.*": "deny", "*.env.example": "allow"}
    }

    @pytest.mark.parametrize(
        ("path", "covered"),
        [("src/a.py", True), ("conf/.env", False), (".env.local", False), ("a/.env.example", True)],
    )
    def test_pattern_rules_judge_the_path(self, path: str, covered: bool) -> None:
        """A {pattern: action} rule is judged on the file the tool read (last matching pattern wins)."""
        cov = _coverage("read", {"filePath": path}, self.RULES, self.SPAWNED)
        assert cov["covered"] is covered
        assert path in cov["by"]

    def test_plain_rules(self) -> None:
        assert _coverage("edit", {}, {"edit": "allow"}, self.SPAWNED)["covered"] is True
        asked = {"edit": {"*": "ask", "*/.opencode/*": "deny"}}
        spawned = self.SPAWNED._replace(data={**(self.SPAWNED.data or {}), "project_directory": "/p"})
        scopes = ["repo:**#fs/read", "repo:src/**#fs/write"]
        inside = _coverage("edit", {"filePath": "/p/src/a.py"}, asked, spawned, scopes)
        assert inside["covered"] is True
        assert "inside the write scope repo:src/**#fs/write" in inside["by"]
        for path in ("/p/docs/a.md", "/elsewhere/src/a.py", "src/a.py"):
            assert _coverage("edit", {"filePath": path}, asked, spawned, scopes)["covered"] is False, path
        assert _coverage("edit", {"filePath": "/p/src/a.py"}, asked, spawned, None)["covered"] is False
        assert _coverage("bash", {}, {"bash": "deny"}, self.SPAWNED)["covered"] is False
        assert _coverage("webfetch", {}, {}, self.SPAWNED)["rule"] is None


class TestNumbers:
    def test_integral_floats_are_ints(self) -> None:
        """JCS prints 5.0 as 5: the report builds such numbers as ints, and the encoder rewrites any other."""
        assert number(5.0) == 5
        assert type(number(5.0)) is int
        assert number(0.25) == 0.25
        value = {"b": [1.0, {"c": -0.0}], "a": 2.5}
        assert fast_canonical(value) == b'{"a":2.5,"b":[1,{"c":0}]}' == canonical_bytes(value)

    @pytest.mark.parametrize(
        "value",
        [{"x": 1e-7}, {"x": 1e21}, {"\ue000": 1, "\U0001f600": 2}, {"t": (1, 2.0)}, {"n": 2**53 - 1}],
    )
    def test_exact_cases_agree(self, value: dict[str, Any]) -> None:
        assert fast_canonical(value) == canonical_bytes(value)


class TestGarbageCollector:
    def test_what_the_audit_allocated_leaves_the_young_generation(self) -> None:
        """On the way out the paused collector finds the audit's containers in the oldest generation,
        not the youngest (where the first allocation would walk them all), and is enabled again."""
        import gc

        assert gc.isenabled()
        gc.collect()  # generations empty: a young-generation pass on the way out promotes one step only
        with report_module._gc_paused():
            assert not gc.isenabled()
            kept = [{"n": [i]} for i in range(20_000)]
        assert gc.isenabled()
        oldest = gc.get_objects(generation=2)
        assert any(o is kept for o in oldest)
        assert any(o is kept[-1] for o in oldest)

    def test_a_callers_frozen_objects_stay_frozen(self) -> None:
        import gc

        gc.freeze()
        try:
            frozen = gc.get_freeze_count()
            with report_module._gc_paused():
                kept = [{"n": [i]} for i in range(2_000)]
            assert gc.get_freeze_count() >= frozen > 0
            assert gc.isenabled()
            assert len(kept) == 2_000
        finally:
            gc.unfreeze()
