"""Specification of pruning: payloads of old, terminal sessions go to a verifiable archive and leave the
database; headers, hashes, the chain, signed checkpoints and the projected state all stay."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from ledger_support import append_all, fresh_ledger, raw_append, raw_db
from strategies import Lifecycle, lifecycles

from ledger import ArchiveError, Entry, Ledger, PruneError
from ledger.archive import read_archive
from ledger.chain import payload_hash
from ledger.prune import redact
from schemas.events import (
    AgentCompleted,
    AgentSpawned,
    DelegationRevoked,
    GateDecided,
    OperatorNote,
    OutputReceived,
    Tokens,
    Verdict,
)
from schemas.state import SessionState


def spawned(sid: str, parent: str | None = None, root: str | None = None) -> AgentSpawned:
    return AgentSpawned(
        session_id=sid,
        task_id="task-1",
        role="coder",
        parent_session_id=parent,
        root_session_id=root or sid,
        depth=0 if parent is None else 1,
        principal=f"agent:{sid}",
        delegator="operator",
    )


def output(sid: str, text: str = "done", tokens: int = 10, cost: float = 0.01) -> OutputReceived:
    return OutputReceived(
        session_id=sid, text=text, tokens=Tokens(input=tokens, output=tokens), cost_usd=cost
    )


def now_after_appends() -> datetime:
    """A cutoff strictly later than everything appended so far."""
    time.sleep(0.002)
    return datetime.now(UTC)


def snapshot(led: Ledger) -> dict[str, SessionState]:
    return {s.session_id: s for s in led.sessions()}


def after_prune(states: dict[str, SessionState], pruned: Iterable[str]) -> dict[str, SessionState]:
    """The states a prune must leave: pruned sessions keep everything but their payload-derived text."""
    gone = set(pruned)
    return {
        sid: SessionState.model_validate(redact(st.model_dump())) if sid in gone else st
        for sid, st in states.items()
    }


def payload_streams(led: Ledger) -> dict[str, bool]:
    """stream -> whether every entry of the stream still has its payload."""
    out: dict[str, bool] = {}
    for e in led.entries():
        out[e.stream] = out.get(e.stream, True) and e.payload is not None
    return out


@pytest.fixture
def history(ledger: Ledger) -> Ledger:
    """Three sessions: `done` (completed, big outputs), `busy` (still running), `refused` (a refused
    request)."""
    ledger.append("done", spawned("done"))
    for i in range(3):
        ledger.append("done", output("done", text=f"output {i} " + "x" * 3000, tokens=100))
    ledger.append("done", AgentCompleted(session_id="done", summary="finished"))
    ledger.append("busy", spawned("busy"))
    ledger.append("busy", output("busy", text="still working"))
    verdict = Verdict(decision="rejected", profile="strict", ruleset_hash="0" * 64)
    ledger.append("refused", GateDecided(verdict=verdict, task_id="t", role="coder"))
    ledger.append("notes", OperatorNote(text="an operator note", by="ops"))
    return ledger


class TestPrune:
    def test_prunes_only_terminal_sessions_and_old_sessionless_streams(
        self, history: Ledger, tmp_path: Path
    ) -> None:
        """Payloads of the completed session and of session-less streams go; the running session keeps its
        own."""
        before = list(history.entries())
        report = history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        assert report.sessions == ["done"]
        assert report.streams == 3
        assert report.entries == 7
        assert report.skipped_active == 1
        kept = payload_streams(history)
        assert kept["busy"] is True
        assert kept["ledger"] is True
        assert kept["done"] is False
        assert kept["refused"] is False
        assert kept["notes"] is False
        after = {e.seq: e for e in history.entries()}
        for old in before:
            new = after[old.seq]
            assert (new.stream, new.type, new.recorded_at_us, new.payload_hash, new.hash) == (
                old.stream,
                old.type,
                old.recorded_at_us,
                old.payload_hash,
                old.hash,
            )
            assert new.salt is None if new.payload is None else new.salt == old.salt

    def test_verify_passes_after_prune_with_a_prune_checkpoint(self, history: Ledger, tmp_path: Path) -> None:
        """After a prune the chain verifies, counts the pruned payloads, and a checkpoint signed by the prune
        is
        checked."""
        history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        report = history.verify()
        assert report.ok, report.broken
        assert report.pruned == 7
        assert report.warnings == []
        with raw_db(history) as conn:
            assert [t for (t,) in conn.execute("SELECT trigger FROM checkpoints")] == ["prune"]
        types = [e.type for e in history.entries(stream="ledger")]
        assert types == ["ledger.pruned", "checkpoint.signed"]

    def test_pruned_event_records_the_prune(self, history: Ledger, tmp_path: Path) -> None:
        """The ledger.pruned event names the cutoff, the archive and its SHA-256, and the pruned session's
        state."""
        cutoff = now_after_appends()
        state = history.session("done")
        report = history.prune(cutoff, archive=tmp_path / "a.jsonl.gz")
        event = next(history.entries(types=["ledger.pruned"]))
        data = event.data()
        assert data is not None
        assert data["archive"] == str(tmp_path / "a.jsonl.gz")
        assert data["archive_sha256"] == report.archive_sha256
        assert data["entries"] == 7
        assert datetime.fromisoformat(data["cutoff"].replace("Z", "+00:00")) == cutoff
        snaps = {s["session_id"]: s["state"] for s in data["sessions"]}
        assert state is not None
        assert SessionState.model_validate(snaps["done"]) == after_prune({"done": state}, ["done"])["done"]
        assert snaps["done"]["last_output"] == "(pruned)"

    def test_session_state_is_unchanged_and_replay_is_clean(self, history: Ledger, tmp_path: Path) -> None:
        """Every session's projected state is the same after the prune, and replay --check finds no drift."""
        before = snapshot(history)
        report = history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        expected = after_prune(before, report.sessions)
        assert snapshot(history) == expected
        check = history.replay(check=True)
        assert check.ok, check.drift
        history.replay()
        assert snapshot(history) == expected

    def test_database_file_shrinks(self, ledger: Ledger, tmp_path: Path) -> None:
        """Pruning sizeable payloads makes the database file (with its WAL) measurably smaller."""
        for i in range(40):
            sid = f"s{i}"
            ledger.append(sid, spawned(sid))
            ledger.append(sid, output(sid, text=f"{i} " + "lorem ipsum " * 500))
            ledger.append(sid, AgentCompleted(session_id=sid))
        ledger.compact()
        db = ledger.path
        before = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
        report = ledger.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        after = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
        assert report.payload_bytes > 200_000
        assert after < before, (before, after)
        assert report.db_bytes_after == after
        assert report.db_bytes_after < report.db_bytes_before

    def test_pruned_output_text_leaves_the_database(self, ledger: Ledger, tmp_path: Path) -> None:
        """After a prune, no output text of a pruned session remains anywhere in the database file."""
        ledger.append("s", spawned("s"))
        ledger.append("s", output("s", text="PERSONAL-DATA-4711 of a data subject"))
        ledger.append("s", AgentCompleted(session_id="s"))
        ledger.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        ledger.compact()
        db = ledger.path
        content = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
        assert b"PERSONAL-DATA-4711" not in content

    def test_dry_run_changes_nothing(self, history: Ledger, tmp_path: Path) -> None:
        """A dry run reports what would go but writes no archive, no event and leaves every payload."""
        before = list(history.entries())
        report = history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz", dry_run=True)
        assert report.dry_run
        assert report.entries == 7
        assert report.sessions == ["done"]
        assert report.archive is None
        assert not (tmp_path / "a.jsonl.gz").exists()
        assert list(history.entries()) == before
        assert history.checkpoints() == []

    def test_cutoff_in_the_future_is_refused(self, history: Ledger, tmp_path: Path) -> None:
        """A cutoff later than now raises PruneError and nothing changes."""
        head = history.head()
        with pytest.raises(PruneError, match="future"):
            history.prune(datetime.now(UTC) + timedelta(minutes=5), archive=tmp_path / "a.jsonl.gz")
        assert history.head() == head
        assert all(e.payload is not None for e in history.entries())

    def test_cutoff_without_timezone_is_refused(self, history: Ledger) -> None:
        """A naive cutoff is ambiguous and raises PruneError."""
        with pytest.raises(PruneError, match="timezone"):
            history.prune(datetime.now() - timedelta(days=1))

    def test_old_cutoff_prunes_nothing_newer(self, history: Ledger, tmp_path: Path) -> None:
        """A cutoff before the sessions ended prunes nothing and writes no archive."""
        report = history.prune(datetime.now(UTC) - timedelta(days=1), archive=tmp_path / "a.jsonl.gz")
        assert (report.entries, report.sessions, report.archive) == (0, [], None)
        assert all(e.payload is not None for e in history.entries())

    def test_pruning_twice_is_harmless(self, history: Ledger, tmp_path: Path) -> None:
        """A second prune with the same cutoff finds nothing left, writes nothing, and the ledger still
        verifies."""
        cutoff = now_after_appends()
        history.prune(cutoff, archive=tmp_path / "a.jsonl.gz")
        entries = list(history.entries())
        states = snapshot(history)
        second = history.prune(cutoff, archive=tmp_path / "b.jsonl.gz")
        assert (second.entries, second.streams, second.archive) == (0, 0, None)
        assert not (tmp_path / "b.jsonl.gz").exists()
        assert list(history.entries()) == entries
        assert snapshot(history) == states
        assert history.verify().ok
        assert history.replay(check=True).ok

    def test_existing_archive_is_not_overwritten(self, history: Ledger, tmp_path: Path) -> None:
        """Pruning into an archive path that exists raises ArchiveError and prunes nothing."""
        (tmp_path / "a.jsonl.gz").write_bytes(b"precious")
        with pytest.raises(ArchiveError, match="already exists"):
            history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        assert (tmp_path / "a.jsonl.gz").read_bytes() == b"precious"
        assert all(e.payload is not None for e in history.entries())

    def test_archive_that_cannot_be_written_prunes_nothing(self, history: Ledger, tmp_path: Path) -> None:
        """An archive whose folder cannot be made (or whose disk fills) raises ArchiveError naming it,
        leaves no partial file, and prunes nothing (it was a bare OSError)."""
        entries = list(history.entries())
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"")
        with pytest.raises(ArchiveError, match=r"could not write the archive .*nothing was pruned"):
            history.prune(now_after_appends(), archive=blocker / "a.jsonl.gz")
        assert list(history.entries()) == entries
        assert not list(tmp_path.glob("**/*.partial"))

    def test_session_revoked_after_the_cutoff_is_kept(self, ledger: Ledger, tmp_path: Path) -> None:
        """A session whose own stream is old but which was revoked (ended) after the cutoff is not pruned,
        even
        when the cutoff falls on a whole second."""
        ledger.append("parent", spawned("parent"))
        ledger.append("child", spawned("child", parent="parent", root="parent"))
        ledger.append("child", output("child"))
        time.sleep(1 - time.time() % 1 + 0.002)  # just after a whole second
        cutoff = datetime.now(UTC).replace(microsecond=0)
        ledger.append(
            "parent", DelegationRevoked(session_id="parent", by="ops", reason="stop", subtree=["child"])
        )
        child = ledger.session("child")
        assert child is not None
        assert child.status == "revoked"
        report = ledger.prune(cutoff, archive=tmp_path / "a.jsonl.gz")
        assert "child" not in report.sessions
        assert all(e.payload is not None for e in ledger.entries(stream="child"))


class TestConcurrentPrune:
    def test_entry_appended_while_archiving_keeps_its_payload(self, ledger: Ledger, tmp_path: Path) -> None:
        """An entry another process appends to a pruned stream after the archive was written is neither
        archived nor stripped: no payload ever leaves the database without being in the archive."""
        ledger.append("old", spawned("old"))
        ledger.append("old", AgentCompleted(session_id="old"))
        cutoff = now_after_appends()
        archive = tmp_path / "a.jsonl.gz"
        outcome: dict[str, object] = {}
        with raw_db(ledger) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
            worker = threading.Thread(
                target=lambda: outcome.update(report=ledger.prune(cutoff, archive=archive)), daemon=True
            )
            worker.start()
            deadline = time.monotonic() + 30
            while not archive.exists() and time.monotonic() < deadline:  # ...while the prune archives
                time.sleep(0.005)
            assert archive.exists()
            late = raw_append(other, "old", OperatorNote(text="late note", by="ops"))
            other.execute("COMMIT")
        worker.join(timeout=60)
        assert "report" in outcome
        archived = {e.seq for e in read_archive(archive)[1]}
        assert late not in archived
        stripped = {e.seq for e in ledger.entries() if e.payload is None}
        assert stripped <= archived, (
            f"payloads stripped without an archive copy: {sorted(stripped - archived)}"
        )
        late_entry = next(ledger.entries(start=late, stop=late))
        assert late_entry.data() == OperatorNote(text="late note", by="ops").model_dump(mode="json")
        assert ledger.verify().ok
        assert ledger.verify_archive(archive).ok


class TestArchive:
    def test_archive_holds_the_pruned_payloads(self, history: Ledger, tmp_path: Path) -> None:
        """The archive has a header naming the ledger and one line per pruned entry with its original payload
        and
        salt, so each payload re-hashes to the hash the ledger kept."""
        original = {e.seq: e for e in history.entries()}
        report = history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        header, lines = read_archive(tmp_path / "a.jsonl.gz")
        archived = list(lines)
        assert header["origin"] == history.origin
        assert header["sessions"] == ["done"]
        assert len(archived) == report.entries == 7
        for a in archived:
            assert a == original[a.seq]
            assert a.payload is not None
            assert a.salt is not None
            assert payload_hash(a.salt, a.payload) == a.payload_hash

    def test_verify_archive_passes(self, history: Ledger, tmp_path: Path) -> None:
        """verify_archive re-checks every archived payload against the retained hashes."""
        history.prune(now_after_appends(), archive=tmp_path / "a.jsonl.gz")
        report = history.verify_archive(tmp_path / "a.jsonl.gz")
        assert report.ok, report.problems
        assert report.checked == 7

    @pytest.mark.parametrize(
        ("field", "problem"),
        [
            ("payload", "payload_altered"),
            ("salt", "payload_altered"),
            ("stream", "header_mismatch"),
            ("seq", "unknown_entry"),
        ],
    )
    def test_verify_archive_detects_a_tampered_archive(
        self, history: Ledger, tmp_path: Path, field: str, problem: str
    ) -> None:
        """An archive with one payload (or salt, or header) edited inside the gzip fails, naming the entry."""
        path = tmp_path / "a.jsonl.gz"
        history.prune(now_after_appends(), archive=path)
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        victim = json.loads(lines[2])
        seq = victim["seq"]
        if field == "payload":
            victim["payload"] = victim["payload"].replace("output", "OUTPUT", 1)
        elif field == "salt":
            victim["salt"] = "00" * 16
        elif field == "stream":
            victim["stream"] = "elsewhere"
        else:
            victim["seq"] = seq = 10_000
        lines[2] = json.dumps(victim)
        path.unlink()
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        report = history.verify_archive(path)
        assert not report.ok
        assert [(p["seq"], p["problem"]) for p in report.problems] == [(seq, problem)]

    def test_archive_of_another_ledger_is_refused(self, history: Ledger, tmp_path: Path) -> None:
        """An archive made by another ledger is reported as wrong_ledger."""
        path = tmp_path / "a.jsonl.gz"
        with Ledger.init(tmp_path / "other.db") as other:
            other.append("x", spawned("x"))
            other.append("x", AgentCompleted(session_id="x"))
            other.prune(now_after_appends(), archive=path)
        report = history.verify_archive(path)
        assert [p["problem"] for p in report.problems] == ["wrong_ledger"]

    def test_entry_from_archive_line_round_trips(self) -> None:
        """An archive line is exactly Entry.to_json, and Entry.from_json reads it back equal."""
        e = Entry(
            3,
            "s",
            "operator.note",
            1_700_000_000_000_001,
            b'{"a":1}',
            bytes(16),
            bytes(32),
            bytes(32),
            bytes(32),
        )
        assert Entry.from_json(json.loads(json.dumps(e.to_json()))) == e

    def test_unreadable_archive_raises_archive_error(self, history: Ledger, tmp_path: Path) -> None:
        """A file that is not a prune archive raises ArchiveError."""
        path = tmp_path / "junk.jsonl.gz"
        path.write_bytes(b"not gzip at all")
        with pytest.raises(ArchiveError):
            history.verify_archive(path)
        with gzip.open(path, "wt") as fh:
            fh.write('{"kind": "something-else"}\n')
        with pytest.raises(ArchiveError, match="not a prune archive"):
            history.verify_archive(path)


def _expected_pruned(life: Lifecycle) -> set[str]:
    return life.terminal | life.sessionless


class TestPruneProperties:
    @given(lifecycles())
    def test_prune_takes_exactly_the_terminal_sessions(self, life: Lifecycle) -> None:
        """For any lifecycle, prune takes the payloads of exactly the terminal sessions (and old session-less
        streams); running sessions keep theirs; verify, verify_archive and replay --check pass; states are
        kept."""
        with fresh_ledger() as led:
            append_all(led, life.steps)
            states = snapshot(led)
            before = {e.seq: e for e in led.entries()}
            archive = led.path.with_name("a.jsonl.gz")
            report = led.prune(now_after_appends(), archive=archive)
            assert set(report.sessions) == life.terminal
            kept = payload_streams(led)
            for stream, intact in kept.items():
                assert intact == (stream not in _expected_pruned(life)), stream
            for sid in life.running:
                assert all(e.payload is not None for e in led.entries(stream=sid))
            verified = led.verify()
            assert verified.ok, verified.broken
            assert verified.pruned == sum(1 for e in before.values() if e.stream in _expected_pruned(life))
            if report.archive is not None:
                checked = led.verify_archive(Path(report.archive))
                assert checked.ok
                assert checked.checked == verified.pruned
            assert snapshot(led) == after_prune(states, report.sessions)
            check = led.replay(check=True)
            assert check.ok, check.drift

    @given(lifecycles(max_sessions=4, max_ops=12))
    def test_prune_then_more_events_then_prune_again(self, life: Lifecycle) -> None:
        """Events appended after a prune (to running sessions) and a second prune keep verify and replay
        clean."""
        with fresh_ledger() as led:
            append_all(led, life.steps)
            led.prune(now_after_appends(), archive=led.path.with_name("a.jsonl.gz"))
            for sid in sorted(life.running):
                led.append(sid, output(sid, tokens=5, cost=0.5))
                led.append(sid, AgentCompleted(session_id=sid, summary="late"))
            states = snapshot(led)
            second = led.prune(now_after_appends(), archive=led.path.with_name("b.jsonl.gz"))
            assert all(e.payload is None for e in led.entries() if e.stream != "ledger")
            assert led.verify().ok
            assert snapshot(led) == after_prune(states, second.sessions)
            check = led.replay(check=True)
            assert check.ok, check.drift
