"""Specification of verification: `Ledger.verify` and `verify_entries` catch every single-byte change,
name what broke and where, check signed checkpoints, and stream in constant memory."""

from __future__ import annotations

import base64
import gc
import json
import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ledger_support import COLUMNS, fill, flip_byte, fresh_ledger, raw_db
from strategies import events, stream_events

from ledger import Entry, Ledger, VerifyReport, verify_entries
from ledger.chain import GENESIS_HASH, chain_hash, new_salt, payload_hash
from ledger.checkpoint import Signer
from ledger.verify import StoredCheckpoint
from schemas.events import OutputReceived


def rehash_from(conn: sqlite3.Connection, start: int) -> None:
    """Recompute payload hashes and the chain from `start` on, with the right chain rule (but no key)."""
    prev = (
        GENESIS_HASH
        if start == 1
        else conn.execute("SELECT hash FROM entries WHERE seq = ?", (start - 1,)).fetchone()[0]
    )
    rows = conn.execute(
        "SELECT e.seq, s.name, e.type, e.recorded_at, e.payload, e.salt FROM entries e JOIN streams s "
        "ON s.id = e.stream_id WHERE e.seq >= ? ORDER BY e.seq",
        (start,),
    ).fetchall()
    for seq, stream, type_, at, payload, salt in rows:
        ph = payload_hash(salt, payload)
        h = chain_hash(prev, seq, stream, type_, at, ph)
        conn.execute("UPDATE entries SET payload_hash = ?, hash = ? WHERE seq = ?", (ph, h, seq))
        prev = h


class TestVerifyProperties:
    @given(st.lists(stream_events, min_size=1, max_size=15))
    def test_any_appended_sequence_verifies(self, items: list) -> None:
        """Whatever events are appended (and checkpointed), verify passes, counting every entry."""
        with fresh_ledger() as led:
            for k, (stream, event) in enumerate(items):
                led.append(stream, event)
                if k == len(items) // 2:
                    led.checkpoint()
            report = led.verify()
            assert report.ok, report.broken
            assert report.entries == len(items) + 1
            assert report.head == led.head().hex
            assert report.checkpoints_checked == 1
            assert report.warnings == []

    @settings(
        max_examples=settings().max_examples * 5,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(
        items=st.lists(
            st.tuples(st.sampled_from(["s-a", "s-b", "s-c", "s-d"]), events), min_size=1, max_size=8
        ),
        column=st.sampled_from(COLUMNS),
        data=st.data(),
    )
    def test_any_single_byte_change_fails_at_its_seq(
        self, items: list, column: str, data: st.DataObject
    ) -> None:
        """Changing any one byte of any stored column of entry k makes verify fail at seq k (for the stream
        name,
        shared by the stream's entries, at the first entry of that stream)."""
        with fresh_ledger() as led:
            entries = [led.append(stream, event) for stream, event in items]
            k = data.draw(st.integers(1, len(entries)), label="k")
            index = data.draw(st.integers(0, 1000), label="byte")
            delta = data.draw(st.integers(1, 255), label="delta")
            expected = k
            if column == "stream":
                stream = entries[k - 1].stream
                expected = min(e.seq for e in entries if e.stream == stream)
                changed = bytearray(stream.encode())
                changed[index % len(changed)] = (changed[index % len(changed)] + delta) % 256
                assume(bytes(changed) not in {e.stream.encode() for e in entries})
            with raw_db(led) as conn:
                flip_byte(conn, k, column, index, delta)
            report = led.verify()
            assert not report.ok
            assert report.broken is not None
            assert report.to_json()["first_bad_seq"] == expected, report.broken
            assert report.broken.seq == expected

    @given(st.lists(stream_events, min_size=2, max_size=10))
    def test_export_round_trip_verifies(self, items: list) -> None:
        """Entries exported with `to_json` (as JSON text) and read back with `from_json` verify like the
        database."""
        with fresh_ledger() as led:
            for stream, event in items:
                led.append(stream, event)
            led.checkpoint()
            lines = [json.dumps(e.to_json(), ensure_ascii=False) for e in led.entries()]
            back = [Entry.from_json(json.loads(line)) for line in lines]
            assert back == list(led.entries())
            report = verify_entries(
                iter(back), checkpoints=led.checkpoints(), verifier=led.verifier(), origin=led.origin
            )
            assert report.ok, report.broken
            assert report.to_json() == led.verify().to_json()


class TestNamedTampering:
    """Each scenario edits the file with plain sqlite3 and checks the kind of problem verify names."""

    @pytest.fixture
    def led(self, ledger: Ledger) -> Ledger:
        fill(ledger, 10)
        return ledger

    def test_payload_altered(self, led: Ledger) -> None:
        """A payload edited in place is reported as payload_altered at its seq, with both hashes as
        evidence."""
        with raw_db(led) as conn:
            conn.execute(
                "UPDATE entries SET payload = "
                "CAST(REPLACE(CAST(payload AS TEXT), 'note 4', 'note X') AS BLOB) "
                "WHERE seq = 5"
            )
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (5, "payload_altered")
        assert b.expected != b.actual
        assert "5" in b.message

    def test_payload_replaced_with_its_hash_recomputed(self, led: Ledger) -> None:
        """A payload replaced together with a matching payload hash is caught by the chain: header_altered."""
        with raw_db(led) as conn:
            salt = new_salt()
            payload = b'{"by":"ops","kind":"note","text":"forged","type":"operator.note"}'
            conn.execute(
                "UPDATE entries SET payload = ?, salt = ?, payload_hash = ? WHERE seq = 4",
                (payload, salt, payload_hash(salt, payload)),
            )
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (4, "header_altered")

    @pytest.mark.parametrize(
        ("sql", "seq"),
        [
            ("UPDATE entries SET type = 'agent.completed' WHERE seq = 3", 3),
            ("UPDATE entries SET recorded_at = recorded_at + 1 WHERE seq = 6", 6),
            ("UPDATE entries SET stream_id = (SELECT id FROM streams WHERE name = 's1') WHERE seq = 7", 7),
        ],
    )
    def test_header_altered(self, led: Ledger, sql: str, seq: int) -> None:
        """A changed type, time or stream of an entry with a successor is reported as header_altered at its
        seq."""
        with raw_db(led) as conn:
            conn.execute(sql)
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (seq, "header_altered")

    def test_broken_link(self, led: Ledger) -> None:
        """A stored hash changed is reported as broken_link at its seq, with expected and actual hashes."""
        with raw_db(led) as conn:
            conn.execute("UPDATE entries SET hash = zeroblob(32) WHERE seq = 8")
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (8, "broken_link")
        assert b.actual == bytes(32).hex()
        assert b.expected == led.verify().broken.expected  # deterministic evidence
        assert b.expected != b.actual

    def test_missing_entry(self, led: Ledger) -> None:
        """A deleted middle row is reported as missing_entry at the missing seq."""
        with raw_db(led) as conn:
            conn.execute("DELETE FROM entries WHERE seq = 6")
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (6, "missing_entry")

    def test_reordered_entries(self, led: Ledger) -> None:
        """Two neighbouring rows with their contents swapped are reported as reordered_entries at the
        first."""
        cols = "stream_id, type, recorded_at, payload, salt, payload_hash, hash"
        with raw_db(led) as conn:
            a = conn.execute(f"SELECT {cols} FROM entries WHERE seq = 4").fetchone()
            b_ = conn.execute(f"SELECT {cols} FROM entries WHERE seq = 5").fetchone()
            sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
            conn.execute(f"UPDATE entries SET {sets} WHERE seq = 4", (*b_,))
            conn.execute(f"UPDATE entries SET {sets} WHERE seq = 5", (*a,))
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (4, "reordered_entries")

    def test_inserted_entry(self, led: Ledger) -> None:
        """A row copied into the middle of the chain (later seqs shifted up) is reported as inserted_entry."""
        with raw_db(led) as conn:
            conn.execute("UPDATE entries SET seq = -(seq + 1) WHERE seq >= 6")
            conn.execute("UPDATE entries SET seq = -seq WHERE seq < 0")
            conn.execute(
                "INSERT INTO entries "
                "SELECT 6, stream_id, type, recorded_at, payload, salt, payload_hash, hash "
                "FROM entries WHERE seq = 2"
            )
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (6, "inserted_entry")

    def test_truncated_tail(self, led: Ledger) -> None:
        """Rows deleted from the end after a checkpoint are reported as truncated_tail at the first missing
        seq."""
        cp = led.checkpoint()
        assert cp.size == 10
        with raw_db(led) as conn:
            conn.execute("DELETE FROM entries WHERE seq >= 8")
        report = led.verify()
        assert report.broken is not None
        assert (report.broken.seq, report.broken.problem) == (8, "truncated_tail")
        assert report.broken.expected == "10"

    def test_truncated_tail_is_invisible_without_a_checkpoint(self, led: Ledger) -> None:
        """Without a checkpoint a cut tail still verifies, and the report warns that it cannot be detected."""
        with raw_db(led) as conn:
            conn.execute("DELETE FROM entries WHERE seq >= 8")
        report = led.verify()
        assert report.ok
        assert any("truncated tail" in w for w in report.warnings)

    def test_checkpoint_mismatch(self, led: Ledger) -> None:
        """A chain rewritten and re-hashed by the right rule but without the key fails at the checkpoint's
        size."""
        led.checkpoint()  # covers entries 1..10, recorded as entry 11
        fill(led, 4)
        with raw_db(led) as conn:
            conn.execute(
                "UPDATE entries SET payload = "
                "CAST(REPLACE(CAST(payload AS TEXT), 'note 2', 'note Z') AS BLOB) "
                "WHERE seq = 3"
            )
            rehash_from(conn, 3)
        report = led.verify()
        assert report.broken is not None
        assert (report.broken.seq, report.broken.problem) == (10, "checkpoint_mismatch")
        assert "rewritten" in report.broken.message

    def test_checkpoints_beyond_the_first_merkle_blocks(self, ledger: Ledger) -> None:
        """Checkpoints at sizes that are not multiples of the verifier's Merkle block (and beyond several
        blocks) are checked; a rewrite between two of them fails at the first one after it."""
        sizes = []
        for n in (300, 213, 300):
            fill(ledger, n)
            sizes.append(ledger.checkpoint().size)
        assert sizes == [300, 514, 815]
        report = ledger.verify(parallel=False)
        assert report.ok, report.broken
        assert report.checkpoints_checked >= 3
        with raw_db(ledger) as conn:
            conn.execute(
                "UPDATE entries SET payload = CAST(REPLACE(CAST(payload AS TEXT), 'note', 'NOTE') AS BLOB) "
                "WHERE seq = 600"
            )
            rehash_from(conn, 600)
        report = ledger.verify(parallel=False)
        assert report.broken is not None
        assert (report.broken.seq, report.broken.problem) == (815, "checkpoint_mismatch")

    @pytest.mark.parametrize("edit", ["root", "size_and_root", "signature", "signer_name", "no_signature"])
    def test_bad_checkpoint_signature(self, led: Ledger, edit: str) -> None:
        """A checkpoint whose note text or signature was altered is reported as bad_checkpoint_signature."""
        cp = led.checkpoint()
        body, _, sig = cp.note.partition("\n\n")
        dash, name, b64 = sig.strip().split(" ")
        raw = bytearray(base64.b64decode(b64))
        raw[-1] ^= 1
        lines = body.split("\n")
        forged_root = base64.b64encode(bytes(32)).decode()
        note = {
            "root": "\n".join([*lines[:2], forged_root, *lines[3:]]) + "\n\n" + sig,
            "size_and_root": "\n".join([lines[0], "9", forged_root, *lines[3:]]) + "\n\n" + sig,
            "signature": body + "\n\n" + f"{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n",
            "signer_name": body + "\n\n" + f"{dash} someone-else {b64}\n",
            "no_signature": body + "\n",
        }[edit]
        with raw_db(led) as conn:
            conn.execute("UPDATE checkpoints SET note = ?", (note,))
        report = led.verify()
        assert report.broken is not None
        assert (report.broken.seq, report.broken.problem) == (cp.size, "bad_checkpoint_signature")

    def test_checkpoint_signed_by_another_key(self, led: Ledger) -> None:
        """A checkpoint re-signed with a different key is refused when verifying with the ledger's public
        key."""
        led.checkpoint()
        stranger = Signer.generate(led.origin)
        head = list(led.entries(stop=10))[-1]
        from ledger.merkle import root_of

        forged = stranger.sign(led.origin, 10, root_of([e.hash for e in led.entries(stop=10)]), head.hash)
        with raw_db(led) as conn:
            conn.execute("UPDATE checkpoints SET note = ?", (forged.note,))
        b = led.verify().broken
        assert b is not None
        assert b.problem == "bad_checkpoint_signature"
        # the witness copy beside the key still holds the genuine checkpoint: the stranger's key fails on it
        assert led.verify(verifier=stranger.verifier).broken.problem == "bad_checkpoint_signature"  # type: ignore[union-attr]
        led.witness_path.unlink()
        assert led.verify(verifier=stranger.verifier).ok

    def test_checkpoint_of_another_origin(self, led: Ledger) -> None:
        """A validly signed checkpoint naming another log's origin is refused."""
        assert led.signer is not None
        other = led.signer.sign(
            "delegation-ledger/someone-else", 10, bytes(32), list(led.entries(stop=10))[-1].hash
        )
        with raw_db(led) as conn:
            conn.execute(
                "INSERT INTO checkpoints (size, root, head, note, trigger, created_at) "
                "VALUES (10, zeroblob(32), zeroblob(32), ?, 'manual', 0)",
                (other.note,),
            )
        b = led.verify().broken
        assert b is not None
        assert b.problem == "bad_checkpoint_signature"
        assert "someone-else" in b.message

    @pytest.mark.parametrize(
        ("sql", "seq"),
        [
            ("UPDATE streams SET name = CAST(X'73FF' AS TEXT) WHERE name = 's1'", 2),
            ("UPDATE entries SET type = CAST(X'6F70C3' AS TEXT) WHERE seq = 4", 4),
        ],
    )
    def test_text_column_that_is_not_utf8(self, led: Ledger, sql: str, seq: int) -> None:
        """A stream name or type corrupted into bytes that are not UTF-8 is reported at its entry, not a
        crash."""
        with raw_db(led) as conn:
            conn.execute(sql)
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (seq, "header_altered")

    def test_first_problem_is_reported(self, led: Ledger) -> None:
        """With several entries tampered, the lowest seq is reported."""
        with raw_db(led) as conn:
            conn.execute("UPDATE entries SET hash = zeroblob(32) WHERE seq IN (9, 3, 7)")
        b = led.verify().broken
        assert b is not None
        assert b.seq == 3

    def test_last_entry_header_change_is_caught(self, led: Ledger) -> None:
        """The newest entry, which has no successor to vouch for it, is still checked: its changed type
        fails."""
        with raw_db(led) as conn:
            conn.execute("UPDATE entries SET type = 'agent.failed' WHERE seq = 10")
        b = led.verify().broken
        assert b is not None
        assert b.seq == 10

    def test_time_going_backwards_with_a_consistent_chain(self, led: Ledger) -> None:
        """An entry re-timed before its predecessor and re-hashed consistently is reported as
        reordered_entries."""
        with raw_db(led) as conn:
            conn.execute(
                "UPDATE entries SET recorded_at = (SELECT recorded_at FROM entries WHERE seq = 4) - 1 "
                "WHERE seq = 5"
            )
            rehash_from(conn, 5)
        b = led.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (5, "reordered_entries")


class TestVerifyReport:
    def test_intact_ledger_with_checkpoint_has_no_warnings(self, ledger: Ledger) -> None:
        """An intact ledger verified after a checkpoint, with its public key, is ok and without warnings."""
        fill(ledger, 20)
        ledger.checkpoint()
        report = ledger.verify()
        assert report.ok
        assert report.warnings == []
        assert (report.entries, report.checkpoints_checked, report.newest_checkpoint_size) == (21, 1, 20)
        assert report.to_json()["first_bad_seq"] is None

    def test_missing_public_key_is_a_warning(self, ledger: Ledger) -> None:
        """Without the public key next to the private one, verify passes but warns that signatures were
        unchecked."""
        fill(ledger, 3)
        ledger.checkpoint()
        ledger.key_path.with_suffix(".pub").unlink()
        report = ledger.verify()
        assert report.ok
        assert any("not checked" in w for w in report.warnings)

    def test_progress_is_reported(self, ledger: Ledger) -> None:
        """The progress callback ends with the number of entries checked."""
        fill(ledger, 30)
        seen: list[int] = []
        ledger.verify(progress=seen.append)
        assert seen[-1] == 30

    def test_pruned_payloads_are_counted_not_failed(self, ledger: Ledger) -> None:
        """Entries whose payload and salt are gone (pruned) still verify through their retained hashes."""
        fill(ledger, 6)
        with raw_db(ledger) as conn:
            conn.execute("UPDATE entries SET payload = NULL, salt = NULL WHERE seq IN (2, 3)")
        report = ledger.verify()
        assert report.ok
        assert report.pruned == 2

    def test_payload_without_salt_is_altered(self, ledger: Ledger) -> None:
        """A payload kept while its salt is gone cannot be checked and is reported as payload_altered."""
        fill(ledger, 3)
        with raw_db(ledger) as conn:
            conn.execute("UPDATE entries SET salt = NULL WHERE seq = 2")
        b = ledger.verify().broken
        assert b is not None
        assert (b.seq, b.problem) == (2, "payload_altered")


def _synthetic(n: int) -> Iterator[Entry]:
    """A valid chain of n entries made on the fly (nothing kept)."""
    prev = GENESIS_HASH
    salt = bytes(16)
    for seq in range(1, n + 1):
        payload = b'{"by":"ops","kind":"note","text":"%d","type":"operator.note"}' % seq
        ph = payload_hash(salt, payload)
        h = chain_hash(prev, seq, f"s{seq % 5}", "operator.note", 1_700_000_000_000_000 + seq, ph)
        yield Entry(
            seq, f"s{seq % 5}", "operator.note", 1_700_000_000_000_000 + seq, payload, salt, ph, prev, h
        )
        prev = h


def _peak(fn: Callable[[], VerifyReport]) -> tuple[int, VerifyReport]:
    """(peak traced Python memory while `fn` runs, its report)."""
    gc.collect()
    tracemalloc.start()
    try:
        report = fn()
        return tracemalloc.get_traced_memory()[1], report
    finally:
        tracemalloc.stop()


class TestConstantMemory:
    def test_verify_entries_streams(self) -> None:
        """verify_entries over 50k entries peaks at about the same memory as over 5k (a lazy iterable)."""
        small, _ = _peak(lambda: verify_entries(_synthetic(5_000)))
        large, report = _peak(lambda: verify_entries(_synthetic(50_000)))
        assert report.ok
        assert report.entries == 50_000
        assert large < small * 1.5 + 64 * 1024, (small, large)

    @pytest.mark.slow
    def test_ledger_verify_streams_from_the_database(self, tmp_path: Path) -> None:
        """Ledger.verify of 20k stored entries peaks at about the same Python memory as of 2k entries."""

        def batch() -> list[tuple[str, OutputReceived]]:
            return [(f"s{i % 9}", OutputReceived(session_id="x", text=f"{i}" * 20)) for i in range(2_000)]

        with Ledger.init(tmp_path / "l.db", durable=False) as led:
            led.append_many(batch())
            led.checkpoint()
            small, _ = _peak(led.verify)
            for _ in range(9):
                led.append_many(batch())
            led.checkpoint()
            large, report = _peak(led.verify)
        assert report.ok
        assert report.entries == 20_002
        assert report.checkpoints_checked >= 2
        assert large < small * 1.5 + 64 * 1024, (small, large)


class TestVerifyEntriesDirectly:
    def test_accepts_any_iterable_including_a_generator(self) -> None:
        """verify_entries checks a generator of entries (no database) and reports its head."""
        entries = list(_synthetic(100))
        report = verify_entries(x for x in entries)
        assert report.ok
        assert report.head == entries[-1].hash.hex()

    def test_empty_input_verifies_with_a_warning(self) -> None:
        """An empty sequence of entries verifies (nothing to check) and warns that no checkpoint exists."""
        report = verify_entries([])
        assert report.ok
        assert report.entries == 0
        assert report.head is None
        assert report.warnings

    def test_checkpoint_beyond_the_input_is_a_truncated_tail(self) -> None:
        """A checkpoint (even unsigned) covering more entries than given means the tail was cut off."""
        signer = Signer.generate("origin")
        entries = list(_synthetic(10))
        from ledger.merkle import root_of

        cp = signer.sign("origin", 10, root_of([e.hash for e in entries]), entries[-1].hash)
        ok = verify_entries(
            entries, checkpoints=[StoredCheckpoint(10, cp.note)], verifier=signer.verifier, origin="origin"
        )
        assert ok.ok
        assert ok.checkpoints_checked == 1
        cut = verify_entries(
            entries[:7], checkpoints=[StoredCheckpoint(10, cp.note)], verifier=signer.verifier
        )
        assert cut.broken is not None
        assert (cut.broken.seq, cut.broken.problem) == (8, "truncated_tail")

    def test_entry_whose_seq_goes_back_is_reordered(self) -> None:
        """An entry repeated after the chain moved on is reported as reordered_entries."""
        entries = list(_synthetic(5))
        b = verify_entries([*entries[:3], entries[1], *entries[3:]]).broken
        assert b is not None
        assert (b.seq, b.problem) == (2, "reordered_entries")

    def test_a_segment_verifies_from_a_known_predecessor(self) -> None:
        """A slice of the chain verifies when given its predecessor hash and first seq."""
        entries = list(_synthetic(20))
        report = verify_entries(entries[10:], start_prev=entries[9].hash, start_seq=11)
        assert report.ok
        assert report.entries == 10
        assert not verify_entries(entries[10:], start_seq=11).ok
