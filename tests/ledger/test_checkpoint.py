"""Specification of signed checkpoints: the key files, the signed-note format, periodic signing, and the
RFC 6962 Merkle root they carry."""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_support import raw_db

from ledger import Ledger, SigningKeyError
from ledger.checkpoint import (
    Signer,
    Verifier,
    load_signer,
    load_verifier,
    parse_checkpoint_body,
    write_key_pair,
)
from ledger.merkle import EMPTY_ROOT, CompactRange, leaf_hash, node_hash, root_of
from schemas.events import OperatorNote

DASH = "\u2014"
hashes = st.binary(min_size=32, max_size=32)
#: names the signed-note format allows: non-empty, no whitespace (which includes every line break), no "+"
key_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
    lambda s: "+" not in s and not any(c.isspace() for c in s)
)


def note(i: int) -> OperatorNote:
    return OperatorNote(text=f"note {i}", by="ops")


class TestKeyFiles:
    def test_init_writes_a_private_key_0600_outside_the_database(
        self, tmp_path: Path, keys_dir: Path
    ) -> None:
        """`Ledger.init` writes the private key with mode 0600 in the keys folder, apart from the database,
        with a
        .pub beside it; the database holds no trace of the private key."""
        with Ledger.init(tmp_path / "db" / "l.db") as led:
            key = led.key_path
            assert key.parent == keys_dir
            assert key.name == f"{led.ledger_id}.key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
            pub = key.with_suffix(".pub")
            assert pub.exists()
            led.append("s", note(1))
            led.checkpoint()
            private_text = key.read_text().strip()
            seed_b64 = private_text.split("+", 4)[4]
            seed = base64.b64decode(seed_b64)[1:]
        db_bytes = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir())
        assert seed not in db_bytes
        assert seed_b64.encode() not in db_bytes
        assert private_text.startswith(f"PRIVATE+KEY+{led.origin}+")
        assert Verifier.parse(pub.read_text()).public == load_signer(key).verifier.public

    def test_init_twice_keeps_the_key(self, tmp_path: Path) -> None:
        """Initialising an existing ledger again reuses its key instead of replacing it."""
        with Ledger.init(tmp_path / "l.db") as led:
            first = led.key_path.read_text()
        with Ledger.init(tmp_path / "l.db") as led:
            assert led.key_path.read_text() == first

    def test_existing_key_file_is_never_overwritten(self, tmp_path: Path) -> None:
        """write_key_pair refuses to replace an existing private key."""
        path = tmp_path / "k.key"
        write_key_pair(Signer.generate("o"), path)
        before = path.read_text()
        with pytest.raises(SigningKeyError, match="overwrite"):
            write_key_pair(Signer.generate("o"), path)
        assert path.read_text() == before

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
    def test_key_with_loose_permissions_is_refused(self, tmp_path: Path, mode: int) -> None:
        """A private key readable or writable by group or others is refused with a message naming chmod."""
        with Ledger.init(tmp_path / "l.db") as led:
            key = led.key_path
        os.chmod(key, mode)
        if mode & 0o077:
            with pytest.raises(SigningKeyError, match="chmod 600"):
                Ledger.open(tmp_path / "l.db")
        else:
            Ledger.open(tmp_path / "l.db").close()

    def test_malformed_keys_are_refused(self, tmp_path: Path) -> None:
        """Garbage or a tampered key hash in a key file raises SigningKeyError, never a raw exception."""
        signer = Signer.generate("origin")
        text = signer.private_text()
        for bad in (
            "nonsense",
            text.replace("PRIVATE+KEY", "PUBLIC+KEY"),
            text[:-8] + "!!!!!!!=",
            text.replace(signer.verifier.key_hash.hex(), "00000000"),
        ):
            with pytest.raises(SigningKeyError):
                Signer.parse(bad)
        with pytest.raises(SigningKeyError):
            Verifier.parse(signer.verifier.text().replace(signer.verifier.key_hash.hex(), "00000000"))
        with pytest.raises(SigningKeyError, match="not found"):
            load_signer(tmp_path / "absent.key")
        with pytest.raises(SigningKeyError, match="not found"):
            load_verifier(tmp_path / "absent.pub")

    def test_checkpoint_without_a_key_is_refused(self, tmp_path: Path) -> None:
        """A ledger opened without a signing key cannot sign: SigningKeyError names `ledger init`."""
        with Ledger.open(tmp_path / "l.db") as led:
            led.append("s", note(1))
            with pytest.raises(SigningKeyError, match="ledger init"):
                led.checkpoint()
            assert led.checkpoints() == []


class TestSignedNote:
    def test_note_format(self, ledger: Ledger) -> None:
        """A checkpoint note is: origin, size, base64 root, `head <hex>`, a blank line, then `— <name>
        <base64>`
        where the signature's first 4 bytes are the key hash."""
        for i in range(5):
            ledger.append("s", note(i))
        cp = ledger.checkpoint()
        lines = cp.note.split("\n")
        assert lines[0] == ledger.origin
        assert lines[1] == "5"
        assert base64.b64decode(lines[2], validate=True) == cp.root
        assert lines[3] == f"head {cp.head.hex()}"
        assert cp.head == list(ledger.entries(stop=5))[-1].hash
        assert lines[4] == ""
        dash, name, sig_b64 = lines[5].split(" ")
        assert (dash, name) == (DASH, ledger.origin)
        sig = base64.b64decode(sig_b64, validate=True)
        assert len(sig) == 4 + 64
        pub = ledger.verifier()
        assert pub is not None
        expected_key_hash = hashlib.sha256(name.encode() + b"\n" + b"\x01" + pub.public).digest()[:4]
        assert sig[:4] == expected_key_hash
        assert lines[6:] == [""]
        assert cp.note == cp.body + "\n" + lines[5] + "\n"
        assert parse_checkpoint_body(cp.body) == (ledger.origin, 5, cp.root, cp.head)

    def test_verifier_pickles(self, ledger: Ledger) -> None:
        """A verifier crosses to another process (the audit's worker) and checks notes there alike."""
        import pickle

        ledger.append("s", note(1))
        cp = ledger.checkpoint()
        pub = ledger.verifier()
        assert pub is not None
        copy = pickle.loads(pickle.dumps(pub))
        assert (copy.name, copy.public, copy.key_hash) == (pub.name, pub.public, pub.key_hash)
        assert copy.check(cp.note) == pub.check(cp.note)
        assert copy.check(cp.note)[0] is True
        assert copy.check(cp.note.replace("\n1\n", "\n2\n", 1))[0] is False

    def test_checkpoint_is_recorded_as_an_event(self, ledger: Ledger) -> None:
        """`checkpoint()` stores the note and appends a checkpoint.signed event carrying it, after the signed
        size."""
        ledger.append("s", note(1))
        cp = ledger.checkpoint()
        entry = list(ledger.entries())[-1]
        assert (entry.seq, entry.stream, entry.type) == (2, "ledger", "checkpoint.signed")
        data = entry.data()
        assert data is not None
        assert (data["size"], data["note"], data["root_hash"], data["head_hash"], data["trigger"]) == (
            1,
            cp.note,
            cp.root.hex(),
            cp.head.hex(),
            "manual",
        )
        assert [(c.size, c.note) for c in ledger.checkpoints()] == [(1, cp.note)]

    @given(key_names, st.integers(0, 2**40), hashes, hashes)
    def test_signer_verifier_round_trip(self, name: str, size: int, root: bytes, head: bytes) -> None:
        """A note signed by a key verifies with its public key (also after both keys are written and parsed
        back),
        and fails with another key or after any change of its body."""
        signer = Signer.generate(name)
        cp = signer.sign(name, size, root, head)
        ok, body = signer.verifier.check(cp.note)
        assert ok
        assert body == cp.body
        again = Signer.parse(signer.private_text())
        assert Verifier.parse(signer.verifier.text()).check(again.sign(name, size, root, head).note)[0]
        assert not Signer.generate(name).verifier.check(cp.note)[0]
        tampered = cp.note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
        assert not signer.verifier.check(tampered)[0]
        assert parse_checkpoint_body(cp.body) == (name, size, root, head)

    def test_signature_is_deterministic_ed25519(self) -> None:
        """Signing the same checkpoint twice gives the same note (Ed25519 is deterministic)."""
        signer = Signer.generate("o")
        assert (
            signer.sign("o", 3, bytes(32), bytes(32)).note == signer.sign("o", 3, bytes(32), bytes(32)).note
        )


class TestPeriodicCheckpoints:
    def test_checkpoint_every_n_events(self, tmp_path: Path) -> None:
        """With `checkpoint_every=10`, 25 single appends leave periodic checkpoints at sizes 10 and 20."""
        with Ledger.init(tmp_path / "l.db", checkpoint_every=10) as led:
            for i in range(25):
                led.append("s", note(i))
        # periodic checkpoints are signed by the writer right after the commit: closing waits for them
        with Ledger.open(tmp_path / "l.db") as led:
            assert [c.size for c in led.checkpoints()] == [10, 20]
            with raw_db(led) as conn:
                assert {t for (t,) in conn.execute("SELECT trigger FROM checkpoints")} == {"periodic"}
            report = led.verify()
            assert report.ok
            assert report.checkpoints_checked == 2
            assert report.warnings == []

    def test_checkpoint_after_an_interval(self, tmp_path: Path) -> None:
        """With a time interval, the first commit after the interval has passed signs a periodic
        checkpoint."""
        with Ledger.init(tmp_path / "l.db", checkpoint_every=10**9, checkpoint_interval_s=0.3) as led:
            time.sleep(0.4)
            led.append("s", note(1))
        with Ledger.open(tmp_path / "l.db") as led:
            assert [c.size for c in led.checkpoints()] == [1]

    def test_no_checkpoint_before_the_interval_or_the_count(self, tmp_path: Path) -> None:
        """Commits before the interval has passed and below `checkpoint_every` sign nothing."""
        with Ledger.init(tmp_path / "l.db", checkpoint_every=100, checkpoint_interval_s=3600) as led:
            for i in range(99):
                led.append("s", note(i))
        with Ledger.open(tmp_path / "l.db") as led:
            assert led.checkpoints() == []

    def test_no_periodic_checkpoint_without_a_key(self, tmp_path: Path) -> None:
        """A ledger without a signing key appends normally and signs nothing."""
        with Ledger.open(tmp_path / "l.db", checkpoint_every=2) as led:
            for i in range(5):
                led.append("s", note(i))
            assert led.checkpoints() == []

    def test_group_committed_batches_are_signed_at_their_end(self, tmp_path: Path) -> None:
        """Periodic checkpoints sign committed sizes only: each signed size is the last entry of a commit."""
        with Ledger.init(tmp_path / "l.db", checkpoint_every=10) as led:
            for k in range(6):
                led.append_many([("s", note(i)) for i in range(7 + k)])
        with Ledger.open(tmp_path / "l.db") as led:
            entries = list(led.entries())
            sizes = [c.size for c in led.checkpoints()]
            assert len(sizes) >= 3
            assert all(b - a >= 10 for a, b in zip([0, *sizes], sizes, strict=False))
            for size in sizes:
                if size < len(entries):
                    assert entries[size].recorded_at_us != entries[size - 1].recorded_at_us, size
            assert led.verify().ok


class TestMerkleRoot:
    def test_checkpoint_root_is_the_rfc6962_root_of_entry_hashes(self, ledger: Ledger) -> None:
        """The root in a checkpoint equals the reference RFC 6962 root over the entry hashes up to its
        size."""
        for n in (1, 2, 3, 7, 8, 13):
            while ledger.head().size < n:
                ledger.append("s", note(ledger.head().size))
            cp = ledger.checkpoint()
            assert cp.root == root_of([e.hash for e in ledger.entries(stop=cp.size)])
        report = ledger.verify()
        assert report.newest_checkpoint_size == 13
        assert report.root == root_of([e.hash for e in ledger.entries(stop=13)]).hex()

    def test_reference_root_on_known_trees(self) -> None:
        """root_of follows RFC 6962: empty tree, one leaf, and the left-heavy split of three leaves."""
        a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
        assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
        assert root_of([a]) == hashlib.sha256(b"\x00" + a).digest() == leaf_hash(a)
        ab = node_hash(leaf_hash(a), leaf_hash(b))
        assert root_of([a, b]) == hashlib.sha256(b"\x01" + leaf_hash(a) + leaf_hash(b)).digest() == ab
        assert root_of([a, b, c]) == node_hash(ab, leaf_hash(c))

    @given(st.lists(hashes, max_size=70))
    def test_compact_range_matches_reference_root_at_every_size(self, leaves: list[bytes]) -> None:
        """Appending leaves one by one to a CompactRange gives the reference root at every size."""
        rng = CompactRange()
        assert rng.root() == root_of([])
        for i, leaf in enumerate(leaves, start=1):
            rng.append(leaf)
            assert rng.size == i
            assert rng.root() == root_of(leaves[:i])

    @given(st.lists(hashes, min_size=1, max_size=70), st.lists(hashes, max_size=20))
    def test_compact_range_rebuilt_from_its_peaks_continues(
        self, first: list[bytes], more: list[bytes]
    ) -> None:
        """A CompactRange rebuilt from (size, peaks), as the ledger stores it, continues to the same roots."""
        rng = CompactRange()
        for leaf in first:
            rng.append(leaf)
        rebuilt = CompactRange(rng.size, dict(rng.peaks))
        assert set(rebuilt.peaks) == {lvl for lvl in range(rng.size.bit_length()) if rng.size >> lvl & 1}
        for leaf in more:
            rebuilt.append(leaf)
        assert rebuilt.root() == root_of(first + more)

    @given(st.data(), st.lists(hashes, max_size=40))
    def test_aligned_blocks_give_the_same_tree_as_single_appends(
        self, data: st.DataObject, tail: list[bytes]
    ) -> None:
        """Appending whole aligned blocks of 2**k leaves (as verify does) and then single leaves gives the
        reference root; a block that is not a power of two, or not aligned, is refused."""
        rng = CompactRange()
        leaves: list[bytes] = []
        for _ in range(data.draw(st.integers(0, 4), label="blocks")):
            k = data.draw(st.integers(0, 5), label="k")
            while rng.size % (1 << k):
                k -= 1  # the largest block the current size is aligned to
            block = [bytes([len(leaves) % 256, i % 256]) * 16 for i in range(1 << k)]
            rng.append_block(block)
            leaves += block
            assert rng.root() == root_of(leaves)
        for leaf in tail:
            rng.append(leaf)
        assert rng.root() == root_of(leaves + tail)
        with pytest.raises(ValueError, match="cannot be appended"):
            rng.append_block([bytes(32)] * 3)
        if rng.size % 2:
            with pytest.raises(ValueError, match="cannot be appended"):
                rng.append_block([bytes(32)] * 2)

    def test_compact_range_refuses_inconsistent_peaks(self) -> None:
        """Peaks that do not match the binary form of the size are refused."""
        with pytest.raises(ValueError, match="needs peaks"):
            CompactRange(3, {0: bytes(32)})

    def test_stored_merkle_edge_matches_the_entries(self, ledger: Ledger) -> None:
        """The Merkle edge kept in the database is the compact range of all entry hashes."""
        ledger.append_many([("s", note(i)) for i in range(37)])
        with raw_db(ledger) as conn:
            peaks = dict(conn.execute("SELECT level, hash FROM merkle_edge").fetchall())
        assert CompactRange(37, peaks).root() == root_of([e.hash for e in ledger.entries()])


class TestWitness:
    def test_witness_copy_is_written_beside_the_key(self, ledger: Ledger) -> None:
        """Each checkpoint is also written, 0600, beside the key: outside the database it protects."""
        ledger.append("s", note(0))
        cp = ledger.checkpoint()
        assert ledger.witness_path.read_text() == cp.note
        assert ledger.witness_path.parent == ledger.key_path.parent
        assert oct(ledger.witness_path.stat().st_mode & 0o777) == "0o600"

    def test_truncation_is_caught_even_when_database_checkpoints_are_deleted(self, ledger: Ledger) -> None:
        """Cutting the tail and deleting every checkpoint row still fails verify: the witness remembers."""
        for i in range(6):
            ledger.append("s", note(i))
        ledger.checkpoint()
        conn = sqlite3.connect(ledger.path)
        conn.execute("DELETE FROM entries WHERE seq > 3")
        conn.execute("DELETE FROM checkpoints")
        conn.commit()
        conn.close()
        report = ledger.verify()
        assert report.broken is not None
        assert report.broken.problem == "truncated_tail"

    def test_checkpoint_kept_elsewhere_can_be_given(self, ledger: Ledger, tmp_path: Path) -> None:
        """A checkpoint published elsewhere is checked when handed to verify (extra_checkpoints)."""
        for i in range(4):
            ledger.append("s", note(i))
        published = ledger.checkpoint()
        ledger.witness_path.unlink()
        conn = sqlite3.connect(ledger.path)
        conn.execute("DELETE FROM entries WHERE seq > 2")
        conn.execute("DELETE FROM checkpoints")
        conn.commit()
        conn.close()
        assert ledger.verify().ok  # nothing left to compare with: only a warning
        outside = read_witness_note(tmp_path, published.note)
        report = ledger.verify(extra_checkpoints=[outside])
        assert report.broken is not None
        assert report.broken.problem == "truncated_tail"


def read_witness_note(folder: Path, text: str) -> Any:
    from ledger.witness import read_witness

    path = folder / "published.checkpoint"
    path.write_text(text)
    return read_witness(path)
