"""Streaming verification of any iterable of entries (a live database, an export, an archive).

Memory stays constant: the verifier holds the previous entry, one entry of look-ahead and the
Merkle tree's compact range. Every link is checked, never only the ends. The first problem is
reported with its seq and kind; checkpoints are checked against the recomputed chain and their
signatures against the public key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ledger import chain
from ledger.checkpoint import Verifier, parse_checkpoint_body
from ledger.entry import Entry
from ledger.merkle import CompactRange

#: entry hashes gathered before they enter the Merkle tree together (see CompactRange.append_block)
MERKLE_BLOCK = 256

Problem = Literal[
    "payload_altered",
    "header_altered",
    "broken_link",
    "missing_entry",
    "reordered_entries",
    "inserted_entry",
    "truncated_tail",
    "checkpoint_mismatch",
    "bad_checkpoint_signature",
]


@dataclass(frozen=True)
class ChainBroken:
    """The first problem found: where, what, and the evidence."""

    seq: int
    problem: Problem
    message: str
    expected: str | None = None
    actual: str | None = None


@dataclass
class VerifyReport:
    entries: int = 0
    pruned: int = 0
    head: str | None = None
    root: str | None = None
    checkpoints_checked: int = 0
    newest_checkpoint_size: int | None = None
    broken: ChainBroken | None = None
    warnings: list[str] = field(default_factory=list)
    #: whether the payload hashes were checked by a worker process beside the chain walk
    parallel: bool = False
    worker_peak_rss_kib: int | None = None
    #: (size, signed root) of checkpoints whose root a `merkle=False` walk left to its caller
    deferred_roots: list[tuple[int, bytes]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "pruned_payloads": self.pruned,
            "head": self.head,
            "merkle_root_at_newest_checkpoint": self.root,
            "checkpoints_checked": self.checkpoints_checked,
            "newest_checkpoint_size": self.newest_checkpoint_size,
            "first_bad_seq": None if self.broken is None else self.broken.seq,
            "problem": None if self.broken is None else self.broken.problem,
            "message": None if self.broken is None else self.broken.message,
            "expected": None if self.broken is None else self.broken.expected,
            "actual": None if self.broken is None else self.broken.actual,
            "warnings": self.warnings,
            "parallel": self.parallel,
        }


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    note: str


def _recompute(prev: bytes, e: Entry, seq: int | None = None) -> bytes:
    return chain.chain_hash(
        prev, e.seq if seq is None else seq, e.stream, e.type, e.recorded_at_us, e.payload_hash
    )


def _classify(prev: bytes, cur: Entry, nxt: Entry | None) -> ChainBroken:
    """Name what broke at `cur`, whose recomputed hash does not match, using one entry of look-ahead."""
    k = cur.seq
    if nxt is not None:
        if _recompute(cur.hash, nxt) == nxt.hash and nxt.seq == k + 1:
            return ChainBroken(
                k,
                "header_altered",
                f"entry {k}: a header field (stream, type, time or payload hash) was changed; "
                "its successor still commits to the original hash",
                expected=cur.hash.hex(),
                actual=_recompute(prev, cur).hex(),
            )
        if _recompute(prev, nxt, k) == nxt.hash and _recompute(nxt.hash, cur, k + 1) == cur.hash:
            return ChainBroken(
                k, "reordered_entries", f"entries {k} and {k + 1} are stored in each other's place"
            )
        if _recompute(prev, nxt, k) == nxt.hash:
            return ChainBroken(
                k, "inserted_entry", f"entry {k} was inserted: the entry after it links to entry {k - 1}"
            )
        if _recompute(_recompute(prev, cur), nxt) == nxt.hash:
            return ChainBroken(
                k,
                "broken_link",
                f"entry {k}: its stored hash was changed, so the link from entry {k + 1} breaks",
                expected=_recompute(prev, cur).hex(),
                actual=cur.hash.hex(),
            )
    return ChainBroken(
        k,
        "broken_link",
        f"entry {k} does not link to entry {k - 1}: its hash does not follow from its "
        "predecessor and its header",
        expected=_recompute(prev, cur).hex(),
        actual=cur.hash.hex(),
    )


Row = tuple[int, str, str, int, "bytes | None", "bytes | None", bytes, bytes]
"""(seq, stream, type, recorded_at_us, payload, salt, payload_hash, hash): an entry as stored."""


def _text(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if type(value) is bytes else value


def _entry(row: Row, prev: bytes) -> Entry:
    seq, stream, type_, at, payload, salt, phash, h = row
    return Entry(seq, _text(stream), _text(type_), at, payload, salt, phash, prev, h)


def verify_entries(
    entries: Iterable[Entry],
    *,
    checkpoints: Sequence[StoredCheckpoint] = (),
    verifier: Verifier | None = None,
    origin: str | None = None,
    start_prev: bytes = chain.GENESIS_HASH,
    start_seq: int = 1,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every link, payload hash and checkpoint of any iterable of entries; stop at the first problem."""
    rows = (
        (e.seq, e.stream, e.type, e.recorded_at_us, e.payload, e.salt, e.payload_hash, e.hash)
        for e in entries
    )
    return verify_rows(
        rows,
        checkpoints=checkpoints,
        verifier=verifier,
        origin=origin,
        start_prev=start_prev,
        start_seq=start_seq,
        progress=progress,
    )


def verify_rows(
    rows: Iterable[Row],
    *,
    checkpoints: Sequence[StoredCheckpoint] = (),
    verifier: Verifier | None = None,
    origin: str | None = None,
    start_prev: bytes = chain.GENESIS_HASH,
    start_seq: int = 1,
    progress: Callable[[int], None] | None = None,
    merkle: bool = True,
) -> VerifyReport:
    """The verifier's loop over stored rows (no object per row; Entries are built only to explain a break).

    `merkle=False` compares checkpoints' heads but leaves their Merkle roots to the caller (listed in
    `deferred_roots`): the chain half of a parallel verify, whose other half runs in
    ledger/payload_check.py.
    """
    report = VerifyReport()
    wanted: dict[int, list[tuple[bytes | None, bytes, StoredCheckpoint]]] = {}
    for cp in checkpoints:
        parsed = _parse_checkpoint(cp, verifier, origin, report)
        if report.broken is not None:
            return report
        if parsed is not None:
            wanted.setdefault(cp.size, []).append(parsed)
    report.newest_checkpoint_size = max((cp.size for cp in checkpoints), default=0) if checkpoints else None
    # the Merkle tree is only needed up to the largest checkpoint it must be compared with
    merkle_until = max(wanted, default=0)
    tree = CompactRange()
    leaves: list[bytes] = []
    prev = start_prev
    expected_seq = start_seq
    last_us = -(2**63)
    count = 0
    pruned = 0
    sha256 = hashlib.sha256
    pack = struct.Struct(">Qq").pack
    pd, ed = chain.PAYLOAD_DOMAIN, chain.ENTRY_DOMAIN
    names: dict[tuple[str, str], bytes] = {}
    payload_prefix = sha256(pd)
    it = iter(rows)
    for row in it:
        seq, stream, type_, at, payload, salt, phash, h = row
        if seq != expected_seq:
            if seq > expected_seq:
                report.broken = ChainBroken(
                    expected_seq,
                    "missing_entry",
                    f"entry {expected_seq} is missing (the next stored entry is {seq})",
                    expected=str(expected_seq),
                    actual=str(seq),
                )
            else:
                report.broken = ChainBroken(
                    seq,
                    "reordered_entries",
                    f"entry {seq} appears after entry {expected_seq - 1}",
                    expected=str(expected_seq),
                    actual=str(seq),
                )
            break
        try:
            if payload is not None:
                ph = payload_prefix.copy()  # SHA-256 state after the domain tag: cheaper than concatenating
                if salt is not None:
                    ph.update(salt)
                ph.update(payload)
                if salt is None or ph.digest() != phash:
                    report.broken = ChainBroken(
                        seq,
                        "payload_altered",
                        f"entry {seq}: the payload does not match its recorded hash",
                        expected=phash.hex(),
                        actual=sha256(pd + (salt or b"") + payload).digest().hex(),
                    )
                    break
            else:
                pruned += 1
            key = (stream, type_)
            st = names.get(key)
            if st is None:
                if len(names) > 4096:
                    names.clear()  # bounded: memory stays constant whatever the ledger's size
                # stored rows carry bytes (see sqlite_store.iter_rows); entries handed in carry str
                sb = stream if type(stream) is bytes else stream.encode()
                tb = type_ if type(type_) is bytes else type_.encode()
                st = names[key] = len(sb).to_bytes(2, "big") + sb + bytes((len(tb),)) + tb
            if sha256(b"".join((ed, prev, pack(seq, at), st, phash))).digest() != h:
                report.broken = _classify(prev, _entry(row, prev), _next_entry(it, h))
                break
            if at < last_us:
                report.broken = ChainBroken(
                    seq,
                    "reordered_entries",
                    f"entry {seq} was recorded before entry {seq - 1}: time goes backwards",
                )
                break
        except (TypeError, AttributeError, ValueError, OverflowError) as exc:
            kind: Problem = "payload_altered" if not isinstance(payload, bytes | None) else "header_altered"
            report.broken = ChainBroken(
                seq, kind, f"entry {seq}: a stored column has the wrong type or form ({exc})"
            )
            break
        last_us = at
        prev = h
        expected_seq += 1
        count += 1
        if seq <= merkle_until:
            if merkle:
                leaves.append(h)
                if len(leaves) == MERKLE_BLOCK:  # the tree only ever takes whole, aligned blocks
                    tree.append_block(leaves)
                    leaves = []
            if seq in wanted:
                root = None
                if merkle:
                    at_size = tree.copy()
                    for leaf in leaves:
                        at_size.append(leaf)
                    root = at_size.root()
                    report.root = root.hex()
                for head, want_root, cp in wanted.pop(seq):
                    report.checkpoints_checked += 1
                    if root is None:
                        report.deferred_roots.append((seq, want_root))
                    if (head is not None and head != h) or (root is not None and want_root != root):
                        report.broken = ChainBroken(
                            seq,
                            "checkpoint_mismatch",
                            f"the ledger up to entry {seq} differs from the signed checkpoint of size {cp.size}: "
                            "the chain was rewritten",
                            expected=(head or want_root).hex(),
                            actual=(h if head is not None else (root or b"")).hex(),
                        )
                        break
                if report.broken is not None:
                    break
        if progress is not None and not count & 0x3FFF:
            progress(count)
    report.entries = count
    report.pruned = pruned
    report.head = prev.hex() if count else None
    if report.broken is None and wanted:
        report.broken = ChainBroken(
            count + 1,
            "truncated_tail",
            f"a signed checkpoint covers {max(wanted)} entries but the ledger ends at "
            f"entry {count}: its tail was cut off",
            expected=str(max(wanted)),
            actual=str(count),
        )
    if report.broken is None and checkpoints and verifier is None:
        report.warnings.append("checkpoint signatures were not checked: no public key was given")
    if report.broken is None and not checkpoints:
        report.warnings.append(
            "no signed checkpoint: a truncated tail or a re-hashed chain cannot be detected "
            "(run `ledger checkpoint`)"
        )
    if progress is not None:
        progress(count)
    return report


def _next_entry(it: Iterator[Row], prev: bytes) -> Entry | None:
    row = next(it, None)
    return None if row is None else _entry(row, prev)


def _parse_checkpoint(
    cp: StoredCheckpoint, verifier: Verifier | None, origin: str | None, report: VerifyReport
) -> tuple[bytes | None, bytes, StoredCheckpoint] | None:
    body = cp.note.partition("\n\n")[0] + "\n"
    if verifier is not None:
        ok, why = verifier.check(cp.note)
        if not ok:
            report.broken = ChainBroken(
                cp.size, "bad_checkpoint_signature", f"checkpoint of size {cp.size}: {why}"
            )
            return None
    try:
        cp_origin, size, root, head = parse_checkpoint_body(body)
    except ValueError as exc:
        report.broken = ChainBroken(
            cp.size, "bad_checkpoint_signature", f"checkpoint of size {cp.size} is malformed: {exc}"
        )
        return None
    if size != cp.size or (origin is not None and cp_origin != origin):
        report.broken = ChainBroken(
            cp.size,
            "bad_checkpoint_signature",
            f"checkpoint text names origin {cp_origin!r} size {size}, but was stored for "
            f"origin {origin!r} size {cp.size}",
        )
        return None
    if size == 0:
        return None
    return head, root, cp
