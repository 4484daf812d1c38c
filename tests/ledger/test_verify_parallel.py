"""Specification of the two-core verify (ledger/verify_parallel.py): the chain walk here, the payload
hashes in a stand-alone worker process; same report as the sequential verifier, whatever happened."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ledger_support import COLUMNS, fill, flip_byte, fresh_ledger, raw_db

from ledger import Ledger
from ledger.chain import PAYLOAD_DOMAIN
from ledger.checkpoint import load_signer
from ledger.verify import StoredCheckpoint
from ledger.verify_parallel import WORKER, verify_database


def _same_report(led: Ledger) -> tuple[dict, dict]:
    par = led.verify(parallel=True).to_json()
    seq = led.verify(parallel=False).to_json()
    return par, seq


class TestSameReportAsSequential:
    def test_intact_ledger_with_pruned_payloads_and_a_checkpoint(self, ledger: Ledger) -> None:
        """An intact ledger gets the sequential report, pruned count included, from the two halves."""
        fill(ledger, 40)
        ledger.checkpoint()
        with raw_db(ledger) as conn:
            conn.execute("UPDATE entries SET payload = NULL, salt = NULL WHERE seq IN (3, 7, 11)")
        par, seq = _same_report(ledger)
        assert par.pop("parallel") is True
        assert seq.pop("parallel") is False
        assert par == seq
        assert par["ok"]
        assert par["pruned_payloads"] == 3
        assert par["entries"] == 41

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        n=st.integers(2, 12),
        column=st.sampled_from(COLUMNS),
        data=st.data(),
    )
    def test_any_single_byte_change_gets_the_sequential_report(
        self, n: int, column: str, data: st.DataObject
    ) -> None:
        """Whichever half sees the change, the report names the same seq and problem as the sequential one."""
        with fresh_ledger() as led:
            fill(led, n)
            led.checkpoint()
            k = data.draw(st.integers(1, n), label="k")
            try:
                with raw_db(led) as conn:
                    flip_byte(conn, k, column, data.draw(st.integers(0, 500)), data.draw(st.integers(1, 255)))
            except sqlite3.IntegrityError:
                assume(False)  # a stream renamed onto another stream's name: the file refuses it
            par, seq = _same_report(led)
            assert not par["ok"]
            assert par == seq

    def test_a_signed_root_that_does_not_match_the_entries(self, ledger: Ledger) -> None:
        """The worker computes the Merkle roots at the checkpoints' sizes: a checkpoint signed with the
        ledger's own key over the right head but a wrong root is a mismatch on both paths."""
        fill(ledger, 300)  # beyond one Merkle block
        head = ledger.head()
        bad = load_signer(ledger.key_path).sign(ledger.origin, head.size, bytes(32), head.hash)
        extra = [StoredCheckpoint(head.size, bad.note)]
        par = ledger.verify(parallel=True, extra_checkpoints=extra).to_json()
        seq = ledger.verify(parallel=False, extra_checkpoints=extra).to_json()
        assert par == seq
        assert (par["first_bad_seq"], par["problem"]) == (300, "checkpoint_mismatch")

    def test_roots_at_every_checkpoint_come_from_the_worker(self, ledger: Ledger) -> None:
        for n in (100, 300, 57):
            fill(ledger, n)
            ledger.checkpoint()
        par = ledger.verify(parallel=True)
        seq = ledger.verify(parallel=False)
        assert par.parallel
        assert par.ok
        assert par.root == seq.root
        assert par.checkpoints_checked == seq.checkpoints_checked >= 3

    def test_empty_ledger(self, ledger: Ledger) -> None:
        par, seq = _same_report(ledger)
        assert par == seq
        assert par["entries"] == 0


class TestWhenToGoParallel:
    def test_small_ledgers_stay_sequential_by_default(self, ledger: Ledger) -> None:
        """Below the threshold a worker's start is not worth it: the default verify is sequential."""
        fill(ledger, 5)
        assert ledger.verify().parallel is False

    def test_threshold_and_second_core_decide_by_default(self, ledger: Ledger) -> None:
        fill(ledger, 5)
        r = verify_database(ledger.path, checkpoints=[], verifier=None, origin=None, min_entries=5)
        assert r.ok
        assert r.parallel is ((os.cpu_count() or 1) > 1)
        if r.parallel:
            assert r.worker_peak_rss_kib is None or 1000 < r.worker_peak_rss_kib < 60_000

    def test_a_failing_worker_falls_back_and_says_so(self, ledger: Ledger) -> None:
        """A worker that fails (here: a 'python' that exits 1 at once) never fails the verify: the
        sequential verifier runs, and the report says why."""
        fill(ledger, 8)
        r = verify_database(
            ledger.path, checkpoints=[], verifier=None, origin=None, parallel=True, python="/bin/false"
        )
        assert r.ok
        assert r.entries == 8
        assert r.parallel is False
        assert any("payload worker failed (exit 1" in w for w in r.warnings), r.warnings

    def test_a_missing_interpreter_falls_back_and_says_so(self, ledger: Ledger, tmp_path: Path) -> None:
        fill(ledger, 3)
        r = verify_database(
            ledger.path,
            checkpoints=[],
            verifier=None,
            origin=None,
            parallel=True,
            python=str(tmp_path / "no-such-python"),
        )
        assert r.ok
        assert any("could not start" in w for w in r.warnings), r.warnings


class TestWorkerScript:
    def run(self, led: Ledger) -> dict:
        out = subprocess.run(
            [sys.executable, "-I", str(WORKER), str(led.path), str(led.head().size), PAYLOAD_DOMAIN.hex()],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    def test_runs_with_the_standard_library_only_and_counts(self, ledger: Ledger) -> None:
        """`python -I` (no site packages, no project on the path): the worker needs nothing else."""
        fill(ledger, 6)
        with raw_db(ledger) as conn:
            conn.execute("UPDATE entries SET payload = NULL, salt = NULL WHERE seq = 4")
        r = self.run(ledger)
        assert (r["checked"], r["pruned"], r["first_bad"]) == (6, 1, None)

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE entries SET payload = CAST('{}' AS BLOB) WHERE seq = 3",
            "UPDATE entries SET salt = NULL WHERE seq = 3",
            "UPDATE entries SET payload = CAST(payload AS TEXT) WHERE seq = 3",
            "UPDATE entries SET payload_hash = zeroblob(32) WHERE seq = 3",
        ],
    )
    def test_names_the_first_payload_that_does_not_match(self, ledger: Ledger, sql: str) -> None:
        fill(ledger, 6)
        with raw_db(ledger) as conn:
            conn.execute(sql)
        assert self.run(ledger)["first_bad"] == 3
