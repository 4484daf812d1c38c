"""Specification of appending: `Ledger.append`, `append_many`, `append_async`, across threads,
coroutines and processes, through crashes and a full disk. Real SQLite files, real processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from ledger_support import fresh_ledger, jcs_loads, raw_db, run_child, spawn_child
from strategies import events, stream_events

from ledger import Entry, Ledger, LedgerClosed, PayloadError, canonical_bytes, encode_event
from ledger.chain import GENESIS_HASH, chain_hash, payload_hash
from schemas.events import (
    AgentSpawned,
    DelegationRequested,
    OperatorNote,
    OutputReceived,
    Tokens,
    ToolCalled,
    parse_event_payload,
)


def note(i: int, by: str = "ops") -> OperatorNote:
    return OperatorNote(text=f"note {i}", by=by)


class TestAppend:
    def test_seqs_count_up_from_one(self, ledger: Ledger) -> None:
        """Successive appends get seq 1, 2, 3 ... and the head follows the last one."""
        got = [ledger.append("s", note(i)).seq for i in range(5)]
        assert got == [1, 2, 3, 4, 5]
        assert ledger.head().size == 5

    def test_empty_ledger_has_genesis_head(self, ledger: Ledger) -> None:
        """A new ledger has size 0 and the all-zero genesis hash as head."""
        head = ledger.head()
        assert (head.size, head.hash) == (0, GENESIS_HASH)

    def test_entry_follows_the_chain_rule(self, ledger: Ledger) -> None:
        """Each entry links to its predecessor's hash and its hash follows from its header by the chain
        rule."""
        first = ledger.append("a", note(1))
        second = ledger.append("b", note(2))
        assert first.prev_hash == GENESIS_HASH
        assert second.prev_hash == first.hash
        for e in (first, second):
            assert e.payload is not None
            assert e.salt is not None
            assert e.payload_hash == payload_hash(e.salt, e.payload)
            assert e.hash == chain_hash(
                e.prev_hash, e.seq, e.stream, e.type, e.recorded_at_us, e.payload_hash
            )
        assert first.salt != second.salt

    def test_payload_is_canonical_json_of_the_model_in_json_mode(self, ledger: Ledger) -> None:
        """The stored payload is the RFC 8785 form of `model_dump(mode='json')`, `type` included."""
        event = OutputReceived(
            session_id="s-1", text="héllo \U0001f600", tokens=Tokens(input=3, output=4), cost_usd=0.1 + 0.2
        )
        entry = ledger.append("s-1", event)
        assert entry.type == "output.received"
        assert entry.payload == rfc8785.dumps(event.model_dump(mode="json"))
        assert entry.payload == canonical_bytes(event.model_dump(mode="json"))

    @given(st.lists(stream_events, min_size=1, max_size=12))
    def test_entries_read_back_equal_what_was_appended(self, items: list) -> None:
        """Whatever events are appended, `entries()` returns exactly the returned entries, and each payload
        parses
        back to an equal event model."""
        with fresh_ledger() as led:
            appended = [led.append(stream, event) for stream, event in items]
            stored = list(led.entries())
            assert stored == appended
            for (stream, event), entry in zip(items, stored, strict=True):
                assert entry.stream == stream
                assert entry.payload == canonical_bytes(event.model_dump(mode="json"))
                assert entry.payload is not None
                assert parse_event_payload(jcs_loads(entry.payload)) == event
            assert led.verify().ok

    def test_dict_payload_is_validated_and_completed_with_defaults(self, ledger: Ledger) -> None:
        """A payload given as a dict is validated against its event model and stored with the model's
        defaults."""
        entry = ledger.append("s", {"type": "operator.note", "text": "x", "by": "ops"})
        assert entry.data() == {"type": "operator.note", "text": "x", "by": "ops", "kind": "note"}

    def test_entries_filters(self, ledger: Ledger) -> None:
        """`entries()` filters by stream, type, seq range and limit, and can run newest first."""
        ledger.append("a", note(1))
        ledger.append("b", OutputReceived(session_id="b", text="t"))
        ledger.append("a", note(3))
        ledger.append("b", note(4))
        assert [e.seq for e in ledger.entries(stream="a")] == [1, 3]
        assert [e.seq for e in ledger.entries(types=["operator.note"])] == [1, 3, 4]
        assert [e.seq for e in ledger.entries(start=2, stop=3)] == [2, 3]
        assert [e.seq for e in ledger.entries(limit=2)] == [1, 2]
        assert [e.seq for e in ledger.entries(descending=True, limit=2)] == [4, 3]
        by_seq = {e.seq: e for e in ledger.entries()}
        assert all(e.prev_hash == by_seq[e.seq - 1].hash for e in ledger.entries(stream="b"))

    def test_reopening_continues_the_chain(self, tmp_path: Path) -> None:
        """A ledger closed and opened again appends after its head and still verifies."""
        with Ledger.init(tmp_path / "l.db") as led:
            last = led.append("s", note(1))
        with Ledger.open(tmp_path / "l.db", create=False) as led:
            nxt = led.append("s", note(2))
            assert (nxt.seq, nxt.prev_hash) == (2, last.hash)
            assert led.verify().ok

    def test_agent_spawned_round_trips_timestamps(self, ledger: Ledger) -> None:
        """An event with a timestamp field is stored in RFC 3339 UTC form and parses back equal."""
        from datetime import UTC, datetime, timedelta, timezone

        when = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=timezone(timedelta(hours=2)))
        event = AgentSpawned(
            session_id="a",
            task_id="t",
            role="r",
            root_session_id="a",
            principal="p",
            delegator="d",
            expires_at=when,
        )
        entry = ledger.append("a", event)
        assert entry.data()["expires_at"] == "2026-01-02T01:04:05.600000Z"
        assert parse_event_payload(entry.data()).expires_at == when.astimezone(UTC)  # type: ignore[union-attr]

    def test_delegation_request_keeps_free_form_data(self, ledger: Ledger) -> None:
        """Free-form request data (unicode keys, floats, nesting) is stored canonically and read back
        equal."""
        request = {"\U0001f600": [1.5, 2.0, {"z": None, "\ue000": "x"}], "a": 1e-7}
        entry = ledger.append("r", DelegationRequested(request=request))
        assert entry.data()["request"] == request
        assert entry.payload == rfc8785.dumps(entry.data())

    def test_open_without_create_refuses_a_missing_file(self, tmp_path: Path) -> None:
        """Opening a ledger that does not exist, without `create`, fails and creates nothing."""
        from ledger import StorageError

        with pytest.raises(StorageError, match="ledger init"):
            Ledger.open(tmp_path / "missing.db", create=False)
        assert not (tmp_path / "missing.db").exists()


class TestRefusedPayloads:
    @pytest.mark.parametrize(
        ("payload", "names"),
        [
            ({"type": "no.such.event", "text": "x"}, ["no.such.event"]),
            ({"text": "x", "by": "y"}, ["type"]),
            ({"type": "operator.note", "by": "ops"}, ["text", "Field required"]),
            (
                {"type": "output.received", "session_id": "s", "text": "t", "cost_usd": "abc"},
                ["cost_usd", "abc"],
            ),
            ({"type": "output.received", "session_id": "s", "text": "t", "cost_usd": -1}, ["cost_usd"]),
            ({"type": "operator.note", "text": "x", "by": "y", "extra": 1}, ["extra"]),
            (
                {
                    "type": "agent.spawned",
                    "session_id": "",
                    "task_id": "t",
                    "role": "r",
                    "root_session_id": "s",
                    "principal": "p",
                    "delegator": "d",
                },
                ["session_id"],
            ),
        ],
    )
    def test_invalid_payload_dict_names_the_field_and_writes_nothing(
        self, ledger: Ledger, payload: dict, names: list[str]
    ) -> None:
        """An invalid payload dict (unknown type, missing field, wrong type) raises PayloadError naming the
        field;
        the head does not move."""
        ledger.append("s", note(0))
        head = ledger.head()
        with pytest.raises(PayloadError) as info:
            ledger.append("s", payload)
        for name in names:
            assert name in str(info.value)
        assert ledger.head() == head
        assert len(list(ledger.entries())) == 1

    @pytest.mark.parametrize("value", [2**53, -(2**53), 10**30, float("nan"), float("inf")])
    def test_numbers_json_cannot_carry_exactly_are_refused(self, ledger: Ledger, value: float) -> None:
        """A model whose free-form data holds an integer beyond 2**53 or a non-finite float is refused (never
        silently written as null), and nothing is written."""
        with pytest.raises(PayloadError) as info:
            ledger.append("s", ToolCalled(session_id="s", tool="bash", input={"n": [value]}))
        assert str(value) in str(info.value)
        with pytest.raises(PayloadError, match=r"input\.n\.0|2\*\*53"):
            ledger.append(
                "s", {"type": "tool.called", "session_id": "s", "tool": "bash", "input": {"n": [value]}}
            )
        assert ledger.head().size == 0

    @pytest.mark.parametrize("stream", ["", "x" * 65536, "\ud800"])
    def test_invalid_stream_names_are_refused(self, ledger: Ledger, stream: str) -> None:
        """An empty stream name, one longer than 65535 UTF-8 bytes or one holding a lone surrogate is
        refused."""
        with pytest.raises(PayloadError, match="stream"):
            ledger.append(stream, note(0))
        assert ledger.head().size == 0

    def test_append_many_refuses_all_when_one_is_invalid(self, ledger: Ledger) -> None:
        """`append_many` with one invalid payload raises PayloadError and writes none of the batch."""
        items = [("s", note(1)), ("s", {"type": "operator.note"}), ("s", note(3))]
        with pytest.raises(PayloadError, match="text"):
            ledger.append_many(items)
        assert ledger.head().size == 0

    def test_append_after_close_raises_ledger_closed(self, tmp_path: Path) -> None:
        """Once closed, append, append_many and append_async raise LedgerClosed and the file is unchanged."""
        led = Ledger.init(tmp_path / "l.db")
        led.append("s", note(1))
        led.close()
        with pytest.raises(LedgerClosed):
            led.append("s", note(2))
        with pytest.raises(LedgerClosed):
            led.append_many([("s", note(3))])
        with pytest.raises(LedgerClosed):
            asyncio.run(led.append_async("s", note(4)))
        with Ledger.open(tmp_path / "l.db", create=False) as again:
            assert again.head().size == 1

    def test_encode_event_returns_type_bytes_and_data(self) -> None:
        """`encode_event` gives the event type, its canonical bytes and its JSON-mode data."""
        event = note(7)
        type_, payload, data = encode_event(event)
        assert type_ == "operator.note"
        assert data == event.model_dump(mode="json")
        assert payload == rfc8785.dumps(data)


class TestConcurrentAppends:
    async def test_concurrent_coroutines_make_one_linear_chain(self, ledger: Ledger) -> None:
        """200 concurrent `append_async` calls get unique, contiguous seqs, each on its own event, and
        verify."""
        results = await asyncio.gather(*(ledger.append_async(f"s{i % 7}", note(i)) for i in range(200)))
        assert sorted(e.seq for e in results) == list(range(1, 201))
        for i, entry in enumerate(results):
            assert entry.data() == note(i).model_dump(mode="json")
            assert entry.stream == f"s{i % 7}"
        assert list(ledger.entries()) == sorted(results, key=lambda e: e.seq)
        assert ledger.verify().ok

    async def test_group_commit_shares_commits(self, ledger: Ledger) -> None:
        """64 concurrent async appends complete in far fewer commits than events (one recorded_at per
        commit)."""
        ledger.append("warm-up", note(0))
        results = await asyncio.gather(*(ledger.append_async("s", note(i)) for i in range(64)))
        commits = {e.recorded_at_us for e in results}
        assert len(commits) <= 8, f"{len(commits)} commits for 64 events"

    def test_sequential_appends_commit_one_by_one(self, ledger: Ledger) -> None:
        """Appends made one after the other each get their own commit (distinct recorded_at): the grouping
        above
        is the writer's doing, not a coarse clock."""
        got = {ledger.append("s", note(i)).recorded_at_us for i in range(20)}
        assert len(got) == 20

    def test_threads_appending_make_one_linear_chain(self, ledger: Ledger) -> None:
        """8 threads appending 40 events each produce seqs 1..320 and a chain that verifies."""
        seqs: list[int] = []
        lock = threading.Lock()

        def work(t: int) -> None:
            for i in range(40):
                e = ledger.append(f"thread-{t}", note(i, by=f"t{t}"))
                with lock:
                    seqs.append(e.seq)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(seqs) == list(range(1, 321))
        assert ledger.verify().ok

    def test_lone_and_queued_appends_mixed_keep_each_callers_order(self, ledger: Ledger) -> None:
        """Threads appending one by one (committed on their own thread when the writer is idle) while
        64 coroutines append through the writer's queue: every entry is acknowledged once, with the
        seq and hash stored, each caller's entries keep its order, and the chain verifies."""
        got: dict[str, list[Entry]] = {}

        def work(t: int) -> None:
            got[f"thread-{t}"] = [ledger.append(f"thread-{t}", note(i)) for i in range(60)]

        async def coros() -> None:
            async def one(c: int) -> None:
                got[f"coro-{c}"] = [await ledger.append_async(f"coro-{c}", note(i)) for i in range(5)]

            await asyncio.gather(*(one(c) for c in range(64)))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        asyncio.run(coros())
        for th in threads:
            th.join()
        stored = {e.seq: e for e in ledger.entries()}
        acknowledged = [e for entries in got.values() for e in entries]
        assert sorted(e.seq for e in acknowledged) == list(range(1, 3 * 60 + 64 * 5 + 1))
        for e in acknowledged:
            assert (stored[e.seq].hash, stored[e.seq].stream) == (e.hash, e.stream)
        for entries in got.values():
            assert [e.seq for e in entries] == sorted(e.seq for e in entries)
            assert [e.data()["text"] for e in entries] == [f"note {i}" for i in range(len(entries))]
        assert ledger.verify().ok

    def test_append_many_commits_in_order(self, ledger: Ledger) -> None:
        """`append_many` returns entries with contiguous seqs in the order the items were given."""
        entries = ledger.append_many([(f"s{i % 3}", note(i)) for i in range(500)])
        assert [e.seq for e in entries] == list(range(1, 501))
        assert [e.data()["text"] for e in entries] == [f"note {i}" for i in range(500)]
        assert ledger.verify().ok


_WRITER = r"""
import asyncio, os, sys, time
from pathlib import Path
from typing import Any
from ledger import Ledger
from schemas.events import OperatorNote
path, name, n, mode, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])

def halfway(done=[]):
    # every process appends about half, then waits for the others' halves: the chain must interleave them
    if done:
        return
    done.append(True)
    (flags / f"half-{name}").touch()
    deadline = time.monotonic() + 60
    while len(list(flags.glob("half-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)

with Ledger.open(path, create=False) as led:
    (flags / f"ready-{name}").touch()
    while not (flags / "go").exists():
        time.sleep(0.001)
    events = [OperatorNote(text=f"{name}:{i}", by=name) for i in range(n)]
    if mode == "sync":
        for i, e in enumerate(events):
            if i >= n // 2:
                halfway()
            led.append(f"proc-{name}", e)
    elif mode == "many":
        for k in range(0, n, 10):
            if k >= n // 2:
                halfway()
            led.append_many([(f"proc-{name}", e) for e in events[k:k + 10]])
    else:
        async def main():
            for k in range(0, n, 20):
                if k >= n // 2:
                    halfway()
                await asyncio.gather(*(led.append_async(f"proc-{name}", e) for e in events[k:k + 20]))
        asyncio.run(main())
"""


class TestMultiProcess:
    def test_processes_appending_to_one_file_keep_one_chain(self, tmp_path: Path) -> None:
        """3 processes x 300 appends (sync, batched, async) to one file give one linear chain of 900 entries
        that verifies, each process's events present and in its own order."""
        path = tmp_path / "shared.db"
        Ledger.init(path).close()
        flags = tmp_path / "flags"
        flags.mkdir()
        modes = {"a": "sync", "b": "many", "c": "async"}
        procs = [
            spawn_child(_WRITER, str(path), name, "300", mode, str(flags)) for name, mode in modes.items()
        ]
        deadline = time.monotonic() + 60
        while len(list(flags.glob("ready-*"))) < 3 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (flags / "go").touch()
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        with Ledger.open(path, create=False) as led:
            entries = list(led.entries())
            assert [e.seq for e in entries] == list(range(1, 901))
            for name in modes:
                texts = [e.data()["text"] for e in entries if e.stream == f"proc-{name}"]
                assert texts == [f"{name}:{i}" for i in range(300)]
            switches = sum(1 for a, b in itertools.pairwise(entries) if a.stream != b.stream)
            assert switches >= 3, "the processes did not interleave"
            report = led.verify()
            assert report.ok, report.broken
            assert report.entries == 900


_STREAMER = r"""
import sys
from ledger import Ledger
from schemas.events import OutputReceived
with Ledger.open(sys.argv[1], create=False) as led:
    i = 0
    while True:
        batch = led.append_many([("victim", OutputReceived(session_id="victim", text="x" * 2000 + str(i + j)))
                                 for j in range(int(sys.argv[2]))])
        for e in batch:
            print(e.seq, e.hash.hex(), flush=True)
        i += len(batch)
"""


class TestCrashes:
    @pytest.mark.parametrize(("batch", "kill_after"), [(1, 40), (7, 150), (50, 400)])
    def test_kill_9_mid_stream_leaves_a_whole_chain(
        self, tmp_path: Path, batch: int, kill_after: int
    ) -> None:
        """SIGKILL of a process appending in a loop leaves no partial entry: the chain verifies, every
        acknowledged
        entry is there unchanged, and appending after re-opening continues the chain."""
        path = tmp_path / "crash.db"
        Ledger.init(path).close()
        proc = spawn_child(_STREAMER, str(path), str(batch))
        acked: dict[int, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            seq, h = line.split()
            acked[int(seq)] = h
            if len(acked) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()

        with Ledger.open(path, create=False) as led:
            report = led.verify()
            assert report.ok, report.broken
            entries = list(led.entries())
            assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
            assert len(entries) >= max(acked)
            for e in entries:
                assert e.payload is not None
                assert e.data()["session_id"] == "victim"
                if e.seq in acked:
                    assert e.hash.hex() == acked[e.seq]
            nxt = led.append("after", note(1))
            assert nxt.seq == len(entries) + 1
            assert nxt.prev_hash == entries[-1].hash
            assert led.verify().ok


_FULL_DISK = r"""
import json, os, resource, signal, sys
from ledger import Ledger, StorageFull
from schemas.events import OperatorNote, OutputReceived
path = sys.argv[1]
out = {}
with Ledger.open(path, create=False) as led:
    for i in range(5):
        led.append("s", OperatorNote(text=f"before {i}", by="ops"))
    led.compact()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    biggest = max(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 64 * 1024, hard))
    out["head_before_each"] = []
    try:
        for i in range(10_000):
            out["head_before_each"].append(led.head().size)
            led.append("big", OutputReceived(session_id="big", text="y" * 8000 + str(i)))
        out["error"] = None
    except StorageFull as exc:
        out["error"] = str(exc)
        out["head_after_error"] = led.head().size
        out["verify_while_full"] = led.verify().ok
    try:
        led.append_many([("big", OperatorNote(text="still full", by="ops"))] * 3)
        out["second_error"] = None
    except StorageFull as exc:
        out["second_error"] = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = led.append("s", OperatorNote(text="after the limit was lifted", by="ops"))
    out["after_seq"] = after.seq
    out["verify_after"] = led.verify().ok
print(json.dumps(out))
"""


class TestFullDisk:
    def test_full_disk_raises_storage_full_and_writes_nothing(self, tmp_path: Path) -> None:
        """When the file cannot grow (RLIMIT_FSIZE in a child process), append raises StorageFull, nothing is
        half-written, verify passes, and appends work again once the limit is lifted."""
        path = tmp_path / "full.db"
        Ledger.init(path).close()
        out = json.loads(run_child(_FULL_DISK, str(path)).stdout)
        assert out["error"] is not None
        assert "full" in out["error"]
        assert "nothing was written" in out["error"]
        heads = out["head_before_each"]
        assert out["head_after_error"] == heads[-1], "the failed append moved the head"
        assert out["verify_while_full"] is True
        assert out["second_error"] is not None
        assert out["after_seq"] == heads[-1] + 1
        assert out["verify_after"] is True
        with Ledger.open(path, create=False) as led:
            entries = list(led.entries())
            assert [e.seq for e in entries] == list(range(1, out["after_seq"] + 1))
            assert entries[-1].data()["text"] == "after the limit was lifted"
            assert led.verify().ok
        with raw_db(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


class TestPropertyAppend:
    @given(st.lists(events, min_size=1, max_size=20), st.integers(1, 5))
    def test_any_appended_sequence_gets_contiguous_seqs(self, evs: list, chunk: int) -> None:
        """Any events, appended singly or in chunks, get seqs 1..n in order and the chain verifies."""
        with fresh_ledger() as led:
            got = []
            for k in range(0, len(evs), chunk):
                got += led.append_many([(f"s{k}", e) for e in evs[k : k + chunk]])
            assert [e.seq for e in got] == list(range(1, len(evs) + 1))
            assert [e.type for e in got] == [e.type for e in evs]
            assert led.verify().ok


class TestAppendMany:
    def test_a_group_commits_as_one_transaction(self, ledger: Ledger) -> None:
        """append_many's events get consecutive seqs and one commit time, even with other appenders racing."""
        import threading

        stop = threading.Event()

        def noise() -> None:
            while not stop.is_set():
                ledger.append("noise", OperatorNote(text="x", by="other"))

        t = threading.Thread(target=noise)
        t.start()
        try:
            entries = ledger.append_many([("g", OperatorNote(text=f"n{i}", by="ops")) for i in range(50)])
        finally:
            stop.set()
            t.join()
        seqs = [e.seq for e in entries]
        assert seqs == list(range(seqs[0], seqs[0] + 50))
        assert len({e.recorded_at_us for e in entries}) == 1
        assert ledger.verify().ok

    def test_an_invalid_member_refuses_the_whole_group(self, ledger: Ledger) -> None:
        """One bad payload in append_many writes nothing of the group."""
        with pytest.raises(PayloadError):
            ledger.append_many([("g", OperatorNote(text="ok", by="ops")), ("g", {"type": "operator.note"})])
        assert ledger.head().size == 0

    def test_close_closes_readers_of_every_thread(self, ledger: Ledger) -> None:
        """Readers opened by other threads are closed by close() too."""
        import threading

        ledger.append("s", OperatorNote(text="x", by="y"))
        t = threading.Thread(target=lambda: list(ledger.entries()))
        t.start()
        t.join()
        assert len(ledger._readers) == 2
        ledger.close()
        assert ledger._readers == []


def _spawned(sid: str) -> AgentSpawned:
    return AgentSpawned(
        session_id=sid, task_id="T", role="coder", root_session_id=sid, principal="c", delegator="pm"
    )


def _still_engine(engine: str | None) -> Any:
    """The condition of an adoption: the session is live and still `engine`'s."""

    def check(st: Any) -> str | None:
        if st is None:
            return "no such session"
        if st.status in ("completed", "stopped", "failed", "interrupted", "revoked"):
            return f"it ended ({st.status})"
        if st.engine != engine:
            return f"another engine adopted it ({st.engine})"
        return None

    return check


_CLAIMER = r"""
import sys, time
from pathlib import Path
from typing import Any
from ledger import Conflict, Ledger
from schemas.events import SessionAdopted
path, me, n, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

def still(engine):
    def check(st):
        if st is None or st.status != "running":
            return "not live"
        return None if st.engine == engine else f"taken by {st.engine}"
    return check

with Ledger.open(path, create=False) as led:
    (flags / f"ready-{me}").touch()
    while not (flags / "go").exists():
        time.sleep(0.001)
    won = 0
    for i in range(n):
        try:
            led.append_if(f"s{i}", SessionAdopted(session_id=f"s{i}", engine=me, reason="r"), still(None))
            won += 1
        except Conflict:
            pass
    print(won)
"""


class TestConditionalAppend:
    def test_appends_when_the_condition_holds_and_writes_nothing_when_not(self, ledger: Ledger) -> None:
        """append_if appends when the condition returns None; otherwise Conflict names the stream and the
        condition's reason, and nothing is written (head unchanged)."""
        from ledger import Conflict
        from schemas.events import SessionAdopted

        ledger.append("s1", _spawned("s1"))
        adopt = SessionAdopted(
            session_id="s1", engine="e2", previous_engine=None, reason="its engine stopped"
        )
        entry = ledger.append_if("s1", adopt, _still_engine(None))
        assert entry.type == "session.adopted"
        st = ledger.session("s1")
        assert st is not None
        assert st.engine == "e2"
        head = ledger.head()
        with pytest.raises(Conflict, match=r"not appended to s1: another engine adopted it \(e2\)"):
            ledger.append_if("s1", adopt, _still_engine(None))
        with pytest.raises(Conflict, match="no such session"):
            ledger.append_if("nobody", adopt, _still_engine(None))
        assert ledger.head() == head
        assert ledger.verify().ok

    def test_the_condition_sees_earlier_appends_of_the_same_batch(self, ledger: Ledger) -> None:
        """Coroutines racing on one condition share a commit: the condition runs at the entry's own place
        in the chain, so exactly one adoption wins, and the unconditional appends of the same batch
        commit all the same."""
        from ledger import Conflict
        from schemas.events import SessionAdopted

        ledger.append("s1", _spawned("s1"))

        async def race() -> list[Any]:
            claims = [
                ledger.append_if_async(
                    "s1", SessionAdopted(session_id="s1", engine=f"e{i}", reason="r"), _still_engine(None)
                )
                for i in range(8)
            ]
            notes = [ledger.append_async("n", note(i)) for i in range(8)]
            return await asyncio.gather(*claims, *notes, return_exceptions=True)

        results = asyncio.run(race())
        claims, notes = results[:8], results[8:]
        won = [r for r in claims if isinstance(r, Entry)]
        assert len(won) == 1
        assert all(isinstance(r, Conflict) for r in claims if not isinstance(r, Entry))
        assert all(isinstance(r, Entry) for r in notes)
        st = ledger.session("s1")
        assert st is not None
        assert st.engine == won[0].data()["engine"]
        assert [e.type for e in ledger.entries(stream="s1")] == ["agent.spawned", "session.adopted"]
        assert ledger.replay(check=True).ok

    def test_processes_racing_on_one_condition_win_each_session_once(self, tmp_path: Path) -> None:
        """3 processes try to adopt the same 60 sessions at once: each session is adopted exactly once
        (check and append are one transaction, serialised by SQLite across processes)."""
        path = tmp_path / "shared.db"
        with Ledger.init(path) as led:
            for i in range(60):
                led.append(f"s{i}", _spawned(f"s{i}"))
                led.append(f"s{i}", ToolCalled(session_id=f"s{i}", tool="bash", input={}, output=""))
            assert all(s.status == "running" for s in led.sessions())
        flags = tmp_path / "flags"
        flags.mkdir()
        procs = [spawn_child(_CLAIMER, str(path), me, "60", str(flags)) for me in ("a", "b", "c")]
        deadline = time.monotonic() + 60
        while len(list(flags.glob("ready-*"))) < 3 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (flags / "go").touch()
        wins = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            wins.append(int(out))
        assert sum(wins) == 60
        with Ledger.open(path, create=False) as led:
            adoptions = [e.stream for e in led.entries(types=["session.adopted"])]
            assert sorted(adoptions) == sorted(f"s{i}" for i in range(60))
            assert {s.engine for s in led.sessions()} <= {"a", "b", "c"}
            assert led.verify().ok
