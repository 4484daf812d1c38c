"""`ledger audit` on the real chain: exit codes, scope options, --sign; damaged, pruned or open ledgers."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from audit_support import CLEAN_TASK, TASK, Chain, Cli

import gate
from engine.audit import build_report, render, seal
from ledger import Ledger, canonical_bytes
from schemas.events import (
    AgentSpawned,
    DelegationRequested,
    GateDecided,
    SessionAdopted,
    SessionInterrupted,
    Verdict,
)

pytestmark = pytest.mark.integration
Hops = Callable[[dict[str, Any]], dict[str, dict[str, Any]]]


class TestExitCodes:
    def test_violation_exits_1_clean_task_exits_0(self, cli: Cli, chain: Chain) -> None:
        """The task with a budget overrun fails (1); the clean task passes (0)."""
        rules = str(chain.constitution)
        assert cli(TASK, "--constitution", rules)[0] == 1
        code, out, _ = cli(CLEAN_TASK, "--constitution", rules)
        assert code == 0
        assert "PASS" in out

    def test_unknown_task_exits_2_and_lists_the_tasks(self, cli: Cli) -> None:
        """A task id the ledger does not hold is bad input, and the known ids are listed."""
        code, _, err = cli("no-such-task")
        err = " ".join(err.split())
        assert code == 2
        assert "unknown task id 'no-such-task'" in err
        assert TASK in err
        assert CLEAN_TASK in err

    def test_no_task_exits_2(self, cli: Cli) -> None:
        code, _, err = cli()
        assert code == 2
        assert TASK in " ".join(err.split())

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--format", "pdf"), "--format: expected one of"),
            (("--since", "yesterday"), "--since: expected a date"),
            (("--retention-min", "6 months"), "--retention-min: expected a duration"),
            (("--since", "2030-01-02", "--until", "2030-01-01"), "must be before --until"),
        ],
    )
    def test_bad_options_exit_2(self, cli: Cli, args: tuple[str, ...], message: str) -> None:
        code, _, err = cli(TASK, *args)
        assert code == 2
        assert message in " ".join(err.split())

    def test_global_json_flag(self, chain_keys: Chain) -> None:
        """`ledger --json audit` prints the JSON envelope."""
        from audit_support import CliRunner, app

        result = CliRunner().invoke(
            app,
            [
                "--db",
                str(chain_keys.db),
                "--json",
                "audit",
                CLEAN_TASK,
                "--constitution",
                str(chain_keys.constitution),
            ],
        )
        assert result.exit_code == 0
        assert result.stdout.startswith('{"report":')

    def test_current_rules_default_to_the_engines(
        self, cli: Cli, monkeypatch: pytest.MonkeyPatch, chain: Chain
    ) -> None:
        """Without --constitution the engine's own loading applies (LEDGER_CONSTITUTION here)."""
        monkeypatch.setenv("LEDGER_CONSTITUTION", str(chain.constitution))
        code, envelope = cli.json(CLEAN_TASK)
        assert code == 0
        assert envelope["report"]["rulesets"]["current"]["source"] == str(chain.constitution)


class TestScope:
    def test_session_subtree(self, cli: Cli, chain: Chain, hops: Hops) -> None:
        """--session limits the audit to one subtree (and the task id may be left out)."""
        code, envelope = cli.json("--session", chain.ids["hang"], "--constitution", str(chain.constitution))
        report = envelope["report"]
        assert code == 0
        assert set(hops(report)) == {chain.ids["hang"], chain.ids["hang_child"]}
        assert report["scope"]["session_id"] == chain.ids["hang"]
        assert report["scope"]["task_id"] == TASK

    def test_unknown_session_exits_2(self, cli: Cli) -> None:
        code, _, err = cli(TASK, "--session", "nope")
        assert code == 2
        assert "unknown session 'nope'" in err

    def test_time_window_keeps_ancestors_as_context(
        self, cli: Cli, chain: Chain, report: dict[str, Any], hops: Hops
    ) -> None:
        """--since the child's request: R stays as context (not re-run), C and the hand-back are audited."""
        since = hops(report)[chain.ids["child"]]["times"]["requested_at"]
        _code, envelope = cli.json(TASK, "--since", since, "--constitution", str(chain.constitution))
        by_id = hops(envelope["report"])
        assert by_id[chain.ids["root"]]["in_window"] is False
        assert by_id[chain.ids["root"]]["rerun"] is None
        assert by_id[chain.ids["child"]]["in_window"]
        assert by_id[chain.ids["back"]]["in_window"]
        assert chain.ids["bad"] not in by_id
        assert envelope["report"]["summary"]["hops"] == len([h for h in by_id.values() if h["in_window"]])

    def test_window_before_everything_is_empty(self, cli: Cli, chain: Chain) -> None:
        code, envelope = cli.json(TASK, "--until", "2020-01-01", "--constitution", str(chain.constitution))
        assert code == 0
        assert envelope["report"]["tree"] == []
        assert envelope["report"]["summary"]["hops"] == 0


class TestSign:
    def test_sign_records_the_report_hash_and_a_checkpoint(self, chain_keys: Chain, tmp_path: Path) -> None:
        """--sign appends audit.issued and a signed checkpoint naming the report's hash; a later audit
        lists the issued report, and the chain still verifies."""
        db = chain_keys.copy_to(tmp_path / "copy")
        cli = Cli(db)
        code, envelope = cli.json(TASK, "--sign", "--constitution", str(chain_keys.constitution))
        assert code == 1  # still the budget overrun
        issued, sha = envelope["issued"], envelope["report_sha256"]
        assert sha == hashlib.sha256(canonical_bytes(envelope["report"])).hexdigest()
        with Ledger.open(db, create=False) as led:
            entry = next(led.entries(start=issued["seq"], stop=issued["seq"]))
            data = entry.data()
            assert entry.type == "audit.issued"
            assert data["report_sha256"] == sha
            assert data["scope"]["ledger_head"] == envelope["report"]["ledger"]["head"]
            cp = [e.data() for e in led.entries(types=["checkpoint.signed"])][-1]
            assert cp["trigger"] == "audit"
            assert cp["audit_report_sha256"] == sha
            assert cp["size"] == issued["seq"] == issued["checkpoint"]["size"]
            assert led.verify().ok
        later = cli.json(TASK, "--constitution", str(chain_keys.constitution))[1]["report"]
        assert [a["report_sha256"] for a in later["prior_audits"]] == [sha]
        assert later["ledger"]["newest_checkpoint"]["trigger"] == "audit"

    def test_sign_without_key_exits_2(
        self, chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEDGER_KEYS_DIR", str(tmp_path / "no-keys"))
        code, _, err = Cli(chain.copy_to(tmp_path / "copy"))(TASK, "--sign")
        assert code == 2
        assert "--sign needs the ledger's signing key" in " ".join(err.split())


class TestDamagedPrunedOpen:
    @pytest.mark.parametrize(
        ("tamper", "unreadable"),
        [
            (lambda p: p.replace(b'"status":"', b'"status":"x', 1), False),
            (lambda p: b"\xff not json" + p[:10], True),
        ],
        ids=["edited", "garbage"],
    )
    def test_tampered_payload_is_a_violation(
        self, chain_keys: Chain, tmp_path: Path, tamper: Callable[[bytes], bytes], unreadable: bool
    ) -> None:
        """A payload altered in the database (even into bytes that are not JSON) makes the ledger
        unverifiable: exit 1, the seq is named, the rest of the report is still built."""
        db = chain_keys.copy_to(tmp_path / "copy")
        conn = sqlite3.connect(db)
        seq, payload = conn.execute(
            "SELECT seq, payload FROM entries WHERE type = 'tool.called' LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE entries SET payload = ? WHERE seq = ?", (tamper(payload), seq))
        conn.commit()
        conn.close()
        code, envelope = Cli(db).json(CLEAN_TASK, "--constitution", str(chain_keys.constitution))
        (finding,) = [f for f in envelope["report"]["findings"] if f["code"] == "LEDGER_UNVERIFIABLE"]
        assert code == 1
        assert finding["seq"] == seq
        assert "payload_altered" in finding["message"]
        assert envelope["report"]["ledger"]["verify"]["ok"] is False
        assert (seq in envelope["report"]["ledger"]["unreadable_payloads"]) is unreadable

    def test_pruned_hops_are_reported_as_unavailable(
        self, chain_keys: Chain, tmp_path: Path, hops: Hops, rules: gate.Constitution
    ) -> None:
        """After a prune, hops show what is unavailable, re-runs say why they cannot run, every format
        renders, and pruning younger than the minimum retention is a violation (none with 0d)."""
        db = chain_keys.copy_to(tmp_path / "copy")
        with Ledger.open(db, create=False) as led:
            led.prune(datetime.now(UTC), archive=tmp_path / "archive.jsonl.gz")
            report = build_report(led, TASK, current=rules)
            relaxed = build_report(led, TASK, current=rules, retention_min=timedelta(0))
        root = hops(report)[chain_keys.ids["root"]]
        assert root["pruned"]
        assert "delegation.requested" in root["unavailable"]
        assert root["verdict"] is None
        assert root["rerun"]["status"] == "unavailable"
        assert root["evidence"]["decided"]["pruned"] is True
        assert root["evidence"]["decided"]["hash"]
        assert root["status"] == "completed"  # from the ledger.pruned snapshot
        codes = {f["code"] for f in report["findings"]}
        assert {"PAYLOAD_PRUNED", "RERUN_UNAVAILABLE", "RETENTION_BELOW_MINIMUM"} <= codes
        assert report["retention"]["prunes"][0]["ok"] is False
        assert "RETENTION_BELOW_MINIMUM" not in {f["code"] for f in relaxed["findings"]}
        envelope = seal(report)
        for fmt in ("text", "json", "md", "html", "csv"):
            assert render(envelope, fmt)
        code, _, _ = Cli(db)(TASK, "--retention-min", "0d", "--constitution", str(chain_keys.constitution))
        assert code == 1  # the overrun is still on record (its counters come from the snapshot)

    @staticmethod
    def _orphan(led: Ledger, chain_keys: Chain, rules: gate.Constitution) -> None:
        """An approved, running session "orphan" of the clean task, recorded by hand."""
        request = (
            next(led.entries(stream=chain_keys.ids["clean"], types=["delegation.requested"])).data() or {}
        )["request"]
        led.append("orphan", DelegationRequested(request=request))
        verdict = Verdict(
            decision="approved",
            profile="default",
            ruleset_hash=rules.ruleset_hash,
            ledger_head=led.head().hex,
        )
        led.append(
            "orphan", GateDecided(verdict=verdict, task_id=CLEAN_TASK, role="tester", engine="boot/1/1/a")
        )
        led.append(
            "orphan",
            AgentSpawned(
                session_id="orphan",
                task_id=CLEAN_TASK,
                role="tester",
                root_session_id="orphan",
                principal="tester",
                delegator="Project Manager",
                timeout_seconds=600,
            ),
        )

    def test_a_request_left_without_a_decision_is_reported(
        self, chain_keys: Chain, tmp_path: Path, rules: gate.Constitution
    ) -> None:
        """A delegation request whose decision was never recorded (the engine killed, or the disk full,
        between the two appends): the audit runs, and shows it."""
        db = chain_keys.copy_to(tmp_path / "copy")
        with Ledger.open(db, create=False) as led:
            request = (
                next(led.entries(stream=chain_keys.ids["clean"], types=["delegation.requested"])).data() or {}
            )["request"]
            seq = led.append("undecided", DelegationRequested(request=request)).seq
            report = build_report(led, CLEAN_TASK, current=rules)
        mine = [f for f in report["findings"] if f["session_id"] == "undecided"]
        assert [(f["code"], f["severity"], f["seq"]) for f in mine] == [("REQUEST_UNDECIDED", "warning", seq)]
        assert "no recorded decision" in mine[0]["message"]
        hop = next(h for h in report["tree"] if h["session_id"] == "undecided")
        assert hop["decision"] is None
        assert hop["rerun"]["status"] == "unavailable"
        assert report["summary"]["result"] == "pass"
        envelope = seal(report)
        for fmt in ("text", "md", "html", "csv"):
            assert render(envelope, fmt)

    def test_takeover_and_interruption_are_reported(
        self, chain_keys: Chain, tmp_path: Path, rules: gate.Constitution
    ) -> None:
        """A session adopted by another engine after its own stopped, then interrupted: an info finding
        names both engines at the adoption's seq, a warning gives the interruption's reason at its seq;
        every format renders them."""
        db = chain_keys.copy_to(tmp_path / "copy")
        with Ledger.open(db, create=False) as led:
            self._orphan(led, chain_keys, rules)
            adopted = led.append(
                "orphan",
                SessionAdopted(
                    session_id="orphan",
                    engine="boot/2/2/b",
                    previous_engine="boot/1/1/a",
                    reason="its engine (process 1) stopped without recording its end",
                ),
            )
            ended = led.append(
                "orphan", SessionInterrupted(session_id="orphan", reason="the agent's server is gone")
            )
            report = build_report(led, CLEAN_TASK, current=rules)
        mine = {f["code"]: f for f in report["findings"] if f["session_id"] == "orphan"}
        assert mine["SESSION_ADOPTED"]["severity"] == "info"
        assert mine["SESSION_ADOPTED"]["seq"] == adopted.seq
        assert "engine boot/2/2/b took over from engine boot/1/1/a" in mine["SESSION_ADOPTED"]["message"]
        assert mine["SESSION_INTERRUPTED"]["severity"] == "warning"
        assert mine["SESSION_INTERRUPTED"]["seq"] == ended.seq
        assert "the agent's server is gone" in mine["SESSION_INTERRUPTED"]["message"]
        assert "SESSION_OPEN" not in mine
        envelope = seal(report)
        for fmt in ("text", "md", "html", "csv"):
            shown = render(envelope, fmt)
            # Markdown escapes the underscore (it may start emphasis); a viewer shows it plain
            assert "SESSION_INTERRUPTED" in (shown.replace("\\_", "_") if fmt == "md" else shown)

    def test_open_session_is_stale_after_its_time(
        self, chain_keys: Chain, tmp_path: Path, rules: gate.Constitution
    ) -> None:
        """A session that never reached a terminal state is open now, stale (a violation) an hour later."""
        db = chain_keys.copy_to(tmp_path / "copy")
        with Ledger.open(db, create=False) as led:
            self._orphan(led, chain_keys, rules)
            now = datetime.now(UTC)
            open_now = build_report(led, CLEAN_TASK, current=rules, now=now)
            later = build_report(led, CLEAN_TASK, current=rules, now=now + timedelta(hours=2))
        assert {f["code"]: f["severity"] for f in open_now["findings"] if f["session_id"] == "orphan"} == {
            "SESSION_OPEN": "warning",
            "RERUN_APPROXIMATE": "warning",
        }
        stale = [f for f in later["findings"] if f["code"] == "SESSION_STALE"]
        assert [f["session_id"] for f in stale] == ["orphan"]
        assert later["summary"]["result"] == "fail"
        assert open_now["summary"]["open"] == 1
