"""The audit's work on the second core (engine/audit/forked.py) and its shortcuts give the report the
plain sequential audit gives: same bytes (a tampered ledger included), same re-runs."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from audit_support import TASK, Chain

import gate
from engine.audit import build_report, build_sealed, forked, helper, seal
from engine.audit import report as report_module
from engine.audit.canonical import fast_canonical, number
from engine.audit.hops import _coverage
from engine.audit.scan import Ev
from ledger import Ledger, canonical_bytes
from schemas.events import DelegationRequested

NOW = datetime(2030, 1, 1, tzinfo=UTC)
Hops = Any


@pytest.fixture(autouse=True)
def no_worker_kept() -> Any:
    """Each test starts and ends with no audit worker: one forked earlier would not see this test's
    patches (it is a copy of the process as it was)."""
    forked._retire_all()
    yield
    forked._retire_all()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The audit worker is forked here whatever threads the test session left behind (they are idle),
    for any number of re-runs; returns the pid of each worker forked."""
    monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    monkeypatch.setattr(helper, "FORK_MIN_RERUNS", 1)
    monkeypatch.setattr(helper, "FORK_MIN_ENTRIES", 1)
    pids: list[int] = []
    real_fork = forked.Worker.fork

    def fork(*args: Any, **kwargs: Any) -> forked.Worker | None:
        worker = real_fork(*args, **kwargs)
        if worker is not None:
            pids.append(worker.pid)
        return worker

    monkeypatch.setattr(forked.Worker, "fork", staticmethod(fork))
    return pids


@pytest.fixture
def leased(monkeypatch: pytest.MonkeyPatch) -> Iterator[forked.Worker]:
    """This process's worker "test" (running `_echo`), leased for the test and given back after."""
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    worker = forked.lease("test", _echo, inbox=1 << 16)
    if worker is None:
        pytest.skip("no fork on this system")
    yield worker
    forked.give_back(worker)


def _tampered(chain: Chain, tmp_path: Path, kind: str, old: bytes, new: bytes) -> tuple[Path, int]:
    """A copy of the chain's ledger whose first `kind` payload has `old` replaced by `new` (behind the
    chain's back); (its path, that entry's seq)."""
    db = chain.copy_to(tmp_path / "copy")
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT seq, payload FROM entries WHERE type = ? LIMIT 1", (kind,)).fetchone()
    if row is None:
        pytest.skip(f"no {kind} in the chain")
    seq, payload = row
    conn.execute("UPDATE entries SET payload = ? WHERE seq = ?", (payload.replace(old, new, 1), seq))
    conn.commit()
    conn.close()
    return db, seq


def _hops(report: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], list(report["tree"])
    while stack:
        hop = stack.pop()
        out.append(hop)
        stack.extend(hop["children"])
    return out


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether process `pid` (not our child) has ended within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def _echo(task: Any, receive: Any, hurried: Any) -> Any:
    """A worker's handler for the tests: the task, its input, and whether it was hurried."""
    if task == "sleep":
        time.sleep(30)
    if task == "spin":
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
    got = receive() if task != "no input" else None
    while task == "wait for hurry" and not hurried():  # killed past its allowance if never hurried
        time.sleep(0.001)
    return task, got, hurried()


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
        """A share of the re-runs in the worker: the same canonical bytes."""
        parallel = _audit(chain_keys.db, rules)
        assert len(started) == 1
        serial = _serial(chain_keys.db, rules, monkeypatch)
        assert canonical_bytes(parallel) == canonical_bytes(serial)
        assert parallel["ledger"]["verify"]["ok"] is True
        assert parallel["summary"]["reruns"]["reproduced"] == 7

    def test_built_and_sealed_at_once_is_the_same(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`build_sealed` (the numbers of the hops walked while the worker finishes) seals the same bytes
        as `seal(build_report(...))`, with a worker and without."""
        with Ledger.open(chain_keys.db, create=False) as led:
            at_once = build_sealed(led, TASK, current=rules, now=NOW)
            assert len(started) == 1
            apart = seal(build_report(led, TASK, current=rules, now=NOW))
            with monkeypatch.context() as m:
                m.setattr(forked, "can_fork", lambda: False)
                alone = build_sealed(led, TASK, current=rules, now=NOW)
        assert at_once.report_canonical == apart.report_canonical == alone.report_canonical
        assert at_once["report_sha256"] == apart["report_sha256"] == alone["report_sha256"]

    def test_a_failed_child_is_done_here(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker that answers nothing (crashed, killed) costs time, never content."""
        monkeypatch.setattr(helper, "_handle", lambda *args: os._exit(3))
        parallel = _audit(chain_keys.db, rules)
        assert len(started) == 1
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
        assert len(started) == 1
        assert answered == [1]  # one of the seven decisions: the rest were re-run here
        assert canonical_bytes(parallel) == canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))

    def test_an_input_too_large_for_the_inbox_is_done_here(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(helper, "INBOX_BYTES", 1 << 20)  # the task fits; its input will not
        monkeypatch.setattr(helper, "_job", lambda scan, streams: b"x" * (2 << 20))
        sent: list[bool] = []
        real_send = helper.Helper.send

        def send(self: helper.Helper, *args: Any) -> bool:
            sent.append(real_send(self, *args))
            return sent[-1]

        monkeypatch.setattr(helper.Helper, "send", send)
        parallel = _audit(chain_keys.db, rules)
        assert len(started) == 1
        assert sent == [False]
        assert canonical_bytes(parallel) == canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))

    def test_worker_receives_its_task_and_input(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A task gets the one input sent, and sees when it is hurried."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        worker = forked.Worker.fork(_echo, inbox=1 << 16)
        if worker is None:
            pytest.skip("no fork on this system")
        try:
            assert worker.begin("wait for hurry", allowance_s=5.0)
            assert worker.send({"streams": ["a", "b"], "n": 2.5})
            assert not worker.send("twice")  # one input per task
            worker.hurry()
            assert worker.result() == ("wait for hurry", {"streams": ["a", "b"], "n": 2.5}, True)
            assert worker.begin("next", allowance_s=5.0)  # the same worker runs the next task
            assert worker.send(7)
            assert worker.result() == ("next", 7, False)
        finally:
            worker.retire()

    def test_no_inbox_no_worker(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where the inbox cannot be mapped, no worker is forked (the audit works alone)."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")

        def refused(*args: Any) -> None:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(forked.mmap, "mmap", refused)
        assert forked.Worker.fork(_echo, inbox=1 << 30) is None

    def test_a_task_told_nothing_receives_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        worker = forked.Worker.fork(_echo, inbox=1 << 16)
        if worker is None:
            pytest.skip("no fork on this system")
        try:
            assert worker.begin("anything", allowance_s=5.0)
            assert worker.result() == ("anything", None, False)  # nothing sent: receive() says None
            assert worker.begin("too large", allowance_s=5.0)
            assert not worker.send(b"x" * (1 << 17))  # does not fit the inbox: the task gets None
            assert worker.result() == ("too large", None, False)
        finally:
            worker.retire()

    def test_a_worker_that_never_answers_is_killed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A worker stuck past its allowance is killed, reaped and reported as failed (the caller then
        works); it serves nothing more."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        worker = forked.Worker.fork(_echo, inbox=1 << 16)
        if worker is None:
            pytest.skip("no fork on this system")
        assert worker.begin("sleep", allowance_s=0.2)
        assert worker.result() is None
        assert worker.alive is False
        with pytest.raises(ChildProcessError):
            os.waitpid(worker.pid, os.WNOHANG)  # already reaped
        assert worker.begin("next", allowance_s=1.0) is False

    def test_worker_is_kept_for_the_next_audits(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One worker serves every audit of the process (forking again would cost more than it saves);
        each audit's report is the serial one."""
        serial = canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))
        for _ in range(3):
            assert canonical_bytes(_audit(chain_keys.db, rules)) == serial
        assert len(started) == 1
        os.kill(started[0], 0)  # still there, idle

    def test_a_dead_worker_is_replaced(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker killed between audits (by anyone): the next audit works without it, then a new one
        is forked; the reports are the serial one."""
        serial = canonical_bytes(_serial(chain_keys.db, rules, monkeypatch))
        assert canonical_bytes(_audit(chain_keys.db, rules)) == serial
        os.kill(started[0], signal.SIGKILL)
        os.waitpid(started[0], 0)
        assert canonical_bytes(_audit(chain_keys.db, rules)) == serial
        assert canonical_bytes(_audit(chain_keys.db, rules)) == serial
        assert len(started) == 2

    def test_busy_worker_is_not_shared(self, leased: forked.Worker) -> None:
        """While one audit holds the worker, another gets none (it works alone) instead of waiting."""
        assert forked.lease("test", _echo, inbox=1 << 16) is None
        forked.give_back(leased)
        again = forked.lease("test", _echo, inbox=1 << 16)
        assert again is leased
        assert again is not None
        forked.give_back(again)
        assert forked.lease("test", _echo, inbox=1 << 16) is leased  # for the fixture to give back

    def test_worker_cpu_is_counted(self, leased: forked.Worker) -> None:
        """The CPU time a live worker used is readable before it is reaped (what the bench counts)."""
        before = forked.cpu_seconds()
        assert leased.begin("spin", allowance_s=10.0)
        assert leased.result() == ("spin", None, False)
        assert forked.cpu_seconds() - before >= 0.25

    def test_worker_leaves_when_its_parent_is_gone(self, tmp_path: Path) -> None:
        """A process that dies without cleaning up (kill -9, os._exit) leaves no worker behind."""
        ready = tmp_path / "worker.pid"
        pid = os.fork()
        if pid == 0:  # a process of its own, which leases a worker and then dies abruptly
            code = 1
            try:
                os.environ["LEDGER_AUDIT_FORK"] = "1"
                forked._workers.clear()
                worker = forked.Worker.fork(_echo, inbox=1 << 16)
                if worker is not None:
                    ready.write_text(str(worker.pid))
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            pytest.skip("no fork on this system")
        assert _gone(int(ready.read_text()))

    def test_a_failing_audit_kills_and_reaps_its_child(
        self, chain_keys: Chain, rules: gate.Constitution, started: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An error while the worker re-runs: the error surfaces, the worker is killed and reaped (its
        task half done), and the next audit forks another."""

        def broken(*args: Any) -> dict[str, Any]:
            raise RuntimeError("hop building failed")

        with monkeypatch.context() as m:
            m.setattr(report_module, "hop_node", broken)
            with pytest.raises(RuntimeError, match="hop building failed"):
                _audit(chain_keys.db, rules)
        assert len(started) == 1
        with pytest.raises(ChildProcessError):
            os.waitpid(started[0], os.WNOHANG)  # already reaped
        assert _audit(chain_keys.db, rules)["ledger"]["verify"]["ok"] is True
        assert len(started) == 2

    def test_tampered_ledger_is_reported_alike(
        self,
        chain_keys: Chain,
        rules: gate.Constitution,
        tmp_path: Path,
        started: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A tampered ledger: the same verify result and the same report, with or without the worker."""
        db, seq = _tampered(chain_keys, tmp_path, "tool.called", b'"tool":"', b'"tool":"x')
        parallel = _audit(db, rules)
        assert len(started) == 1
        serial = _serial(db, rules, monkeypatch)
        assert parallel["ledger"]["verify"] == serial["ledger"]["verify"]
        assert parallel["ledger"]["verify"]["first_bad_seq"] == seq
        assert canonical_bytes(parallel) == canonical_bytes(serial)

    @pytest.mark.parametrize("kind", ["tool.called", "permission.decided", "output.received"])
    def test_a_payload_of_another_shape_is_unreadable(
        self, chain_keys: Chain, rules: gate.Constitution, tmp_path: Path, kind: str
    ) -> None:
        """An event whose payload lost what the projection reads of it (its session id) is listed as
        unreadable, whether the audit folds it (an output) or only checks it (a count it never reads)."""
        db, seq = _tampered(chain_keys, tmp_path, kind, b'"session_id":', b'"session_idx":')
        report = _audit(db, rules)
        assert seq in report["ledger"]["unreadable_payloads"]
        assert report["ledger"]["verify"]["first_bad_seq"] == seq

    @pytest.mark.parametrize("cost", [1e18, 2.0**60, 1e20])
    def test_a_huge_recorded_number_is_audited(
        self,
        chain_keys: Chain,
        rules: gate.Constitution,
        tmp_path: Path,
        started: list[int],
        cost: float,
    ) -> None:
        """A request with a huge budget (recorded as JCS writes it: bare digits, which decode as an
        integer past 2**53) is audited, with and without the worker, and the report holds the
        number as it was recorded."""
        db = chain_keys.copy_to(tmp_path / "copy")
        request = {
            "role": "tester",
            "task_id": TASK,
            "delegation_context": {"budget": {"max_cost_usd": cost}},
        }
        with Ledger.open(db, create=False) as led:
            led.append("huge-budget", DelegationRequested(request=request))
            envelope = build_sealed(led, TASK, current=rules, now=NOW)
        assert envelope.report_canonical is not None
        assert canonical_bytes({"n": cost})[5:-1] in envelope.report_canonical
        hop = next(h for h in _hops(envelope["report"]) if h["session_id"] == "huge-budget")
        assert hop["budget"]["requested"]["max_cost_usd"] == cost
        assert len(started) == 1

    def test_busy_elsewhere_counts_what_runs_now(self) -> None:
        """Now, not the last minute: a process spinning beside this one is counted while it spins."""
        if not Path("/proc/loadavg").exists():
            pytest.skip("no /proc/loadavg here")
        pid = os.fork()
        if pid == 0:  # spin for a while, then leave
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pass
            os._exit(0)
        try:
            time.sleep(0.05)
            seen = []
            for _ in range(40):
                seen.append(forked.busy_elsewhere())
                time.sleep(0.005)
            assert max(seen) >= 1
            assert min(seen) >= 0
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def test_fork_switch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """LEDGER_AUDIT_FORK=0 never forks; =1 forks whatever the load (where it is safe)."""
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "0")
        assert forked.Worker.fork(_echo, inbox=1 << 16) is None
        assert forked.lease("test", _echo, inbox=1 << 16) is None
        monkeypatch.setenv("LEDGER_AUDIT_FORK", "1")
        monkeypatch.setattr(forked, "busy_elsewhere", lambda: 99.0)
        idle = all(t is threading.main_thread() or t.name == "ledger-writer" for t in threading.enumerate())
        assert forked.can_fork() is idle
        monkeypatch.delenv("LEDGER_AUDIT_FORK")
        assert forked.can_fork() is False  # automatic: no idle core at a load of 99


class TestHelperNumbers:
    def test_batches_say_whether_their_numbers_are_plain(self) -> None:
        """The helper walks each batch of re-runs for the encoder: a number that needs it (here a float
        only the exact encoder writes) makes its batch not plain, and the audit walks it again."""
        import pickle
        from types import SimpleNamespace

        values = {"a": {"n": 1}, "b": {"n": 0.5}, "c": {"n": 1e-7}, "d": {"n": 2.0}}
        rerunner = SimpleNamespace(scan=SimpleNamespace(contexts={}), rerun=lambda s: values[s])
        monkey = pytest.MonkeyPatch()
        monkey.setattr(helper, "HURRY_BATCH", 1)
        try:
            batches = helper._rerun_job((list(values), {}), rerunner, lambda: False)  # type: ignore[arg-type]
        finally:
            monkey.undo()
        assert [pickle.loads(b)[1] for b in batches] == [True, True, False, False]


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
