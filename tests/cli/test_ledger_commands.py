"""The `ledger` CLI for operators and auditors: exit codes, --json, and what each command does."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cli.app import app
from ledger import Entry, Ledger, verify_entries
from schemas.events import AgentCompleted, AgentSpawned, GateDecided, OutputReceived, Tokens, Verdict


def _finished_session(led: Ledger, sid: str) -> None:
    v = Verdict(decision="approved", profile="default", ruleset_hash="sha256:x")
    led.append(sid, GateDecided(verdict=v, task_id="T-1", role="tester"))
    led.append(
        sid,
        AgentSpawned(
            session_id=sid,
            task_id="T-1",
            role="tester",
            root_session_id=sid,
            principal="tester",
            delegator="pm",
        ),
    )
    led.append(
        sid,
        OutputReceived(
            session_id=sid, text="all green " * 30, tokens=Tokens(input=40, output=10), cost_usd=0.002
        ),
    )
    led.append(sid, AgentCompleted(session_id=sid, summary="done"))


class TestInitAndVerify:
    def test_init_creates_database_and_private_key(self, run: Any, keys_dir: Path) -> None:
        """`ledger init` creates the database and an Ed25519 key with mode 0600 outside it."""
        info = run.json("init")
        key = Path(info["key"])
        assert Path(info["db"]).exists()
        assert key.exists()
        assert key.parent == keys_dir
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().startswith("PRIVATE+KEY+")

    def test_verify_passes_then_names_the_tampered_seq(self, run: Any) -> None:
        """verify exits 0 on an intact ledger and 1 with the first bad seq after a payload is edited."""
        run("init")
        for i in range(5):
            run("note", "--stream", "s1", "--text", f"note {i}", "--by", "ops", "--new-stream")
        run("checkpoint")
        assert run.json("verify")["ok"] is True
        conn = sqlite3.connect(run.db)
        conn.execute(
            "UPDATE entries SET payload = CAST(REPLACE(CAST(payload AS TEXT), 'note 2', 'note X') AS BLOB)"
            " WHERE seq = 3"
        )
        conn.commit()
        conn.close()
        report = run.json("verify", code=1)
        assert report["first_bad_seq"] == 3
        assert report["problem"] == "payload_altered"
        human = run("verify", code=1).stdout
        assert "TAMPERED at seq 3" in human

    def test_missing_database_is_bad_input(self, run: Any) -> None:
        """Commands on a ledger that does not exist exit 2 and say how to create it."""
        result = run("verify", code=2)
        assert "ledger init" in result.output

    def test_checkpoint_prints_a_signed_note(self, run: Any) -> None:
        """`ledger checkpoint` prints origin, size, root, head, a blank line and a signature line."""
        run("init")
        run("note", "--stream", "s", "--text", "t", "--by", "ops", "--new-stream")
        lines = run("checkpoint").stdout.splitlines()
        assert lines[0].startswith("delegation-ledger/")
        assert lines[1] == "1"
        assert lines[3].startswith("head ")
        assert lines[4] == ""
        assert lines[5].startswith("\u2014 ")


class TestQueries:
    def test_events_filters_by_type_and_stream(self, run: Any) -> None:
        """`ledger events --type` and `--stream` return only matching events, oldest first."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "sess-a")
            _finished_session(led, "sess-b")
        evs = run.json("events", "--type", "output.received")
        assert [e["stream"] for e in evs] == ["sess-a", "sess-b"]
        evs = run.json("events", "--stream", "sess-b")
        assert {e["stream"] for e in evs} == {"sess-b"}
        assert len(evs) == 4
        assert run.json("events", "--task", "T-1", "--limit", "2")[-1]["type"] == "agent.completed"

    def test_unknown_event_type_is_bad_input(self, run: Any) -> None:
        """An unknown --type exits 2 and lists the known types."""
        run("init")
        assert "agent.spawned" in run("events", "--type", "bogus", code=2).output

    def test_sessions_and_show(self, run: Any) -> None:
        """`sessions` lists projected state; `show` a session with its events; --active hides ended ones."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "sess-a")
        sessions = run.json("sessions")
        assert sessions[0]["status"] == "completed"
        assert sessions[0]["tokens_used"] == 50
        assert run.json("sessions", "--active") == []
        shown = run.json("show", "sess-a")
        assert shown["session"]["session_id"] == "sess-a"
        assert len(shown["events"]) == 4
        run("show", "nope", code=2)

    def test_sessions_whose_engine_is_gone_are_marked(self, run: Any) -> None:
        """A live session whose engine process is gone is marked "(engine gone)" in the table and has
        engine_alive false in JSON; one whose engine runs is alive; an ended one is not marked."""
        from engine.owner import engine_stopped, new_engine_id

        run("init")
        mine = new_engine_id()
        host, _pid, ticks, _instance = mine.split("/")
        dead = f"{host}/999999/{ticks}/gone"
        v = Verdict(decision="approved", profile="default", ruleset_hash="sha256:x")
        try:
            with Ledger.open(run.db) as led:
                for sid, engine in (("live-dead", dead), ("live-mine", mine)):
                    led.append(sid, GateDecided(verdict=v, task_id="T-1", role="tester", engine=engine))
                _finished_session(led, "ended-one")
            alive = {s["session_id"]: s["engine_alive"] for s in run.json("sessions")}
            assert alive == {"live-dead": False, "live-mine": True, "ended-one": None}
            table = run("sessions").stdout
            assert table.count("(engine gone)") == 1
            lines = table.splitlines()
            at = next(i for i, li in enumerate(lines) if "live-dead" in li)
            assert "(engine gone)" in " ".join(li.split("│")[4].strip() for li in lines[at : at + 2])
        finally:
            engine_stopped(mine)

    def test_export_is_reverifiable_anywhere(self, run: Any, tmp_path: Path) -> None:
        """`ledger export` writes JSON Lines that verify_entries accepts as a chain."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "s")
        out = tmp_path / "export.jsonl"
        run("export", "--out", str(out))
        entries = [Entry.from_json(json.loads(line)) for line in out.read_text().splitlines()]
        assert len(entries) == 4
        assert verify_entries(entries).ok

    def test_note_records_who_and_what(self, run: Any) -> None:
        """`ledger note` appends an operator.note with its author."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "s9")
        entry = run.json(
            "note", "--stream", "s9", "--text", "checked the refusal", "--by", "alice", "--kind", "oversight"
        )
        assert entry["payload"] == {
            "type": "operator.note",
            "text": "checked the refusal",
            "by": "alice",
            "kind": "oversight",
        }

    def test_note_never_starts_a_stream_by_mistake(self, run: Any) -> None:
        """A note is forever: on a stream no entry has (a mistyped session id), or on a ledger that does
        not exist, it is refused and nothing is written, unless --new-stream says so."""
        result = run("note", "--stream", "s1", "--text", "t", "--by", "ops", code=2)
        assert "no ledger" in result.output
        assert not run.db.exists()
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "3e539ba8-1feb-426f-9cd4-0214a2e2bc84")
            before = led.head().size
        result = run("note", "--stream", "3e539ba9", "--text", "t", "--by", "ops", code=2)
        assert "no stream or session '3e539ba9'" in result.output
        assert "--new-stream" in result.output
        with Ledger.open(run.db) as led:
            assert led.head().size == before
        entry = run.json("note", "--stream", "ops-log", "--text", "t", "--by", "ops", "--new-stream")
        assert entry["stream"] == "ops-log"
        # --new-stream on a stream that exists (or that a prefix names) notes it as usual
        again = run.json("note", "--stream", "ops-log", "--text", "t2", "--by", "ops", "--new-stream")
        assert again["stream"] == "ops-log"

    def test_recorded_text_is_shown_as_it_is_never_as_markup(self, run: Any) -> None:
        """What the ledger holds (an agent's output, a stream name, a note) is printed as written: text
        that looks like rich markup is neither hidden nor styled, and never crashes a command (a stray
        closing tag did, after the note was already recorded)."""
        run("init")
        stream, by = "x[/]y", "eve[bold]"
        text = "see [conceal]hidden[/conceal] and [/] :warning: \x1b[1A\x1b[2Kerased? \u202eevil"
        with Ledger.open(run.db) as led:
            led.append(stream, {"type": "operator.note", "text": text, "by": by})
        noted = run("note", "--stream", stream, "--text", text, "--by", by)
        assert f"recorded note on {stream} as seq 2" in noted.stdout
        wide = run.runner.invoke(app, ["--db", str(run.db), "events"], env={"COLUMNS": "300"})
        assert wide.exit_code == 0, wide.output
        shown = "see [conceal]hidden[/conceal] and [/] :warning: \\x1b[1A\\x1b[2Kerased? \\u202eevil"
        assert f"text={shown}" in wide.stdout  # control characters made visible, no emoji, nothing acts
        assert "\x1b" not in wide.stdout
        assert "\u202e" not in wide.stdout
        shown_in_show = run.runner.invoke(app, ["--db", str(run.db), "show", stream], env={"COLUMNS": "300"})
        assert f"text={shown}" in shown_in_show.stdout
        assert "x[/]y" in run("show", stream).stdout
        refused = run("events", "--stream", "zz[/]", code=2)
        assert "no stream or session 'zz[/]'" in refused.output
        assert "Traceback" not in refused.output

    def test_errors_are_never_broken_across_lines(self, run: Any, tmp_path: Path) -> None:
        """An error stays on one line whatever its length (rich used to fold it at 80 columns, which
        split paths and phrases: a script's grep or a copied path then failed)."""
        deep = tmp_path / ("d" * 90) / "ledger.db"
        result = run.runner.invoke(app, ["--db", str(deep), "verify"])
        assert result.exit_code == 2
        lines = [li for li in result.output.splitlines() if li.strip()]
        assert lines == [f"error: no ledger at {deep} (run `ledger init` first, or pass --db)"]

    def test_files_that_cannot_be_written_are_bad_input_and_change_nothing(
        self, run: Any, tmp_path: Path
    ) -> None:
        """An --out or --archive that is a folder, or whose folder cannot be made, exits 2 naming the
        option before any work: nothing is pruned, exported or recorded (not even a signed audit whose
        report would then be lost). They used to end in a traceback, after the work for prune's."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "s1")
            head = led.head().size
        impossible = "/proc/no-such-dir/file"
        for args, flag in (
            (["export", "--out", str(tmp_path)], "--out"),
            (["export", "--out", impossible], "--out"),
            (["prune", "--older-than", "0d", "--archive", impossible], "--archive"),
            (["prune", "--older-than", "0d", "--archive", str(tmp_path)], "--archive"),
            (["audit", "T-1", "--sign", "--out", impossible], "--out"),
        ):
            result = run(*args, code=2)
            assert result.output.startswith(f"error: {flag}: "), (args, result.output)
            assert "Traceback" not in result.output
        with Ledger.open(run.db) as led:
            assert led.head().size == head
            assert all(e.payload is not None for e in led.entries())

    def test_an_empty_note_is_bad_input(self, run: Any) -> None:
        """An empty or blank --text or --by exits 2 naming the option (it was a pydantic traceback)."""
        run("init")
        for args, flag in (
            (["--text", "", "--by", "ops"], "--text"),
            (["--text", "  ", "--by", "ops"], "--text"),
            (["--text", "t", "--by", ""], "--by"),
        ):
            result = run("note", "--stream", "ops", "--new-stream", *args, code=2)
            assert result.output.startswith(f"error: {flag}: "), result.output
        with Ledger.open(run.db) as led:
            assert led.head().size == 0

    def test_session_ids_may_be_shortened(self, run: Any) -> None:
        """`show`, `--stream` and `note` take a prefix that names one stream; an ambiguous prefix is
        refused with the candidates; the human tables print each id by its shortest unique prefix
        (8 characters at least)."""
        run("init")
        a, b = "3e539ba8-1feb-426f-9cd4-0214a2e2bc84", "3e539ba8-77aa-4000-8000-000000000000"
        with Ledger.open(run.db) as led:
            _finished_session(led, a)
            _finished_session(led, b)
            _finished_session(led, "df084d68-e3b6-4a5e-8c80-31aea9f35fac")
        assert run.json("show", "df08")["session"]["session_id"] == "df084d68-e3b6-4a5e-8c80-31aea9f35fac"
        assert run.json("show", "3e539ba8-1")["session"]["session_id"] == a
        ambiguous = run("show", "3e53", code=2).output.replace("\n", "")
        assert "ambiguous" in ambiguous
        assert a in ambiguous
        assert b in ambiguous
        assert {e["stream"] for e in run.json("events", "--stream", "3e539ba8-7")} == {b}
        assert run.json("note", "--stream", "df08", "--text", "t", "--by", "ops")["stream"].startswith(
            "df084d68-"
        )
        # shorter than 4 characters (or empty), a prefix names nothing, even when one stream matches:
        # a note is forever, and "d" should not land on whichever session starts with it
        with Ledger.open(run.db) as led:
            head = led.head().size
        for short in ("df0", "d", ""):
            refused = run("note", "--stream", short, "--text", "t", "--by", "ops", code=2).output
            assert "--stream: " in refused
            assert "4 characters" in refused or "(got '')" in refused
        assert "4 characters" in run("show", "df0", code=2).output
        with Ledger.open(run.db) as led:
            assert led.head().size == head
        table = run("sessions").stdout
        assert "3e539ba8-1 " in table
        assert "3e539ba8-7 " in table
        assert "df084d68 " in table
        assert "df084d68-" not in table

    def test_stream_and_task_narrow_each_other(self, run: Any) -> None:
        """`events --stream S --task T` lists S's events only if S belongs to T (the filters combine)."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "sess-a")
            _finished_session(led, "sess-b")
        assert {e["stream"] for e in run.json("events", "--stream", "sess-a", "--task", "T-1")} == {"sess-a"}
        assert run.json("events", "--stream", "sess-a", "--task", "T-other") == []


class TestPruneAndReplay:
    def test_prune_archives_and_verify_still_passes(self, run: Any, tmp_path: Path) -> None:
        """prune --older-than removes payloads into an archive; verify and verify --archive pass."""
        run("init")
        with Ledger.open(run.db) as led:
            for i in range(20):
                _finished_session(led, f"s{i}")
        assert run.json("prune", "--before", "2000-01-01")["entries"] == 0
        dry = run.json("prune", "--older-than", "0s", "--dry-run")
        assert dry["entries"] == 80
        assert dry["dry_run"] is True
        archive = tmp_path / "a.jsonl.gz"
        report = run.json("prune", "--older-than", "0s", "--archive", str(archive))
        assert report["entries"] == 80
        assert report["db_bytes_after"] < report["db_bytes_before"]
        with gzip.open(archive, "rt") as fh:
            assert sum(1 for _ in fh) == 81  # header + entries
        ok = run.json("verify", "--archive", str(archive))
        assert ok["ok"]
        assert ok["pruned_payloads"] == 80
        assert ok["archives"][0]["checked"] == 80
        assert run.json("replay", "--check")["ok"] is True

    def test_bad_duration_is_bad_input(self, run: Any) -> None:
        """A malformed --older-than exits 2 with the expected form."""
        run("init")
        assert "30d" in run("prune", "--older-than", "thirty days", code=2).output
        run("prune", code=2)

    def test_replay_check_reports_drift_and_replay_repairs_it(self, run: Any) -> None:
        """replay --check exits 1 naming the session and field; replay rebuilds; the check then passes."""
        run("init")
        with Ledger.open(run.db) as led:
            _finished_session(led, "s1")
        conn = sqlite3.connect(run.db)
        conn.execute("UPDATE sessions SET state = json_set(state, '$.tokens_used', 999999)")
        conn.commit()
        conn.close()
        report = run.json("replay", "--check", code=1)
        assert report["drift"][0]["session_id"] == "s1"
        assert report["drift"][0]["field"] == "tokens_used"
        run("replay")
        assert run.json("replay", "--check")["ok"] is True


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    """The installed `ledger` entry point works as a separate process (exit codes included)."""
    env = {**os.environ, "LEDGER_DB": str(tmp_path / "p.db"), "LEDGER_KEYS_DIR": str(tmp_path / "k")}
    exe = Path(sys.executable).with_name("ledger")
    assert subprocess.run([exe, "init"], env=env, capture_output=True, check=False).returncode == 0
    res = subprocess.run([exe, "--json", "verify"], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0
    assert json.loads(res.stdout)["ok"] is True
    assert subprocess.run([exe, "prune"], env=env, capture_output=True, check=False).returncode == 2


def test_verify_against_a_published_checkpoint(run: Any, tmp_path: Path) -> None:
    """`verify --checkpoint FILE` catches a cut tail that the database alone no longer shows."""
    run("init")
    for i in range(4):
        run("note", "--stream", "s", "--text", f"n{i}", "--by", "ops", "--new-stream")
    published = tmp_path / "published.checkpoint"
    published.write_text(run("checkpoint").stdout)
    with Ledger.open(run.db) as led:
        led.witness_path.unlink()
    conn = sqlite3.connect(run.db)
    conn.execute("DELETE FROM entries WHERE seq > 2")
    conn.execute("DELETE FROM checkpoints")
    conn.commit()
    conn.close()
    assert run.json("verify")["ok"] is True
    report = run.json("verify", "--checkpoint", str(published), code=1)
    assert report["problem"] == "truncated_tail"
    run("verify", "--checkpoint", str(tmp_path / "missing"), code=2)


@given(st.lists(st.text("0123456789abcdef-", min_size=1, max_size=40), min_size=1, max_size=30, unique=True))
def test_short_ids_are_unique_prefixes(names: list[str]) -> None:
    """Each shortened id is a prefix of its own name, at least 8 characters long (or the whole name), and
    starts no other name of the table, so giving it back names that one stream."""
    from cli.query_cmds import _short

    short = _short(names)
    for name, s in short.items():
        assert name.startswith(s)
        assert len(s) >= min(8, len(name))
        assert [n for n in names if n.startswith(s)] == [name] or s == name
