"""One pass over the ledger: every entry's header and payload, indexed for the audit.

The scan reads the chain once (entries 1..head, raw rows on a read-only connection of its own),
verifies it with the ledger's verifier in the same pass, decodes each payload once, and folds the
projections with the ledger's own `Projector`, so budgets, revocations and states come from the
events alone, never from the stored projection. While folding it captures, for every gate
decision, the state of the chain *as of the ledger head the decision recorded* (the parent hops
with their revocation and remaining budget, and the sessions revoked by then), which is what the
engine handed the gate at the time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from ledger import Ledger, VerifyReport, verify_rows
from ledger import sqlite_store as store
from ledger.canonical import load_payload
from ledger.checkpoint import Verifier
from ledger.entry import Head, iso_us
from ledger.projections import COUNTED_TYPES, PROJECTED_TYPES, DictSessions, Projector
from ledger.verify import StoredCheckpoint

TERMINAL_TYPES = ("agent.completed", "agent.stopped", "agent.failed", "session.interrupted")


class Ev(NamedTuple):
    """One entry as the audit sees it: header, hash and decoded payload (None once pruned)."""

    seq: int
    stream: str
    type: str
    at_us: int
    hash_bytes: bytes
    data: dict[str, Any] | None

    @property
    def hash(self) -> str:
        return self.hash_bytes.hex()

    def evidence(self, texts: dict[int, str]) -> dict[str, Any]:
        """The entry's coordinates as evidence: seq, type, hash, time, and whether its payload is gone
        (`texts`: the scan's times written already, see `LedgerScan.texts`)."""
        return {
            "hash": self.hash_bytes.hex(),
            "pruned": self.data is None,
            "recorded_at": text_of(texts, self.at_us),
            "seq": self.seq,
            "type": self.type,
        }


def text_of(texts: dict[int, str], us: int) -> str:
    """`iso_us(us)`, written once per scan (the fold writes every event's time; the tree reuses them)."""
    text = texts.get(us)
    if text is None:
        text = texts[us] = iso_us(us)
    return text


class _Projector(Projector):
    """The ledger's projector, writing each time once for the whole scan (`LedgerScan.texts`)."""

    def __init__(self, texts: dict[int, str]) -> None:
        super().__init__()
        self.texts = texts

    def _when(self, recorded_at_us: int) -> str:
        return text_of(self.texts, recorded_at_us)


@dataclass(frozen=True, slots=True)
class AncestorAt:
    """A parent hop as the ledger showed it at a decision: what the engine turned into a gate `Hop`."""

    session_id: str
    revoked: bool
    max_tokens: int | None
    max_cost_usd: float | None
    subtree_tokens: int
    subtree_cost_usd: float


@dataclass(frozen=True, slots=True)
class ContextAt:
    """The chain context of one decision, rebuilt as of the ledger head it recorded."""

    head_seq: int | None  # seq of the entry whose hash the verdict recorded (None: not found)
    parents: tuple[AncestorAt, ...]
    revoked: frozenset[str]  # sessions on the path revoked by then (REV-01 looks at no others)
    broken_ancestry: str | None = None  # why the parent chain could not be followed


@dataclass
class LedgerScan:
    head: Head
    events: list[Ev] = field(default_factory=list)
    by_stream: dict[str, list[Ev]] = field(default_factory=lambda: defaultdict(list))
    firsts: dict[tuple[str, str], Ev] = field(default_factory=dict)  # (stream, type) -> first entry
    states: DictSessions = field(default_factory=DictSessions)
    contexts: dict[str, ContextAt] = field(default_factory=dict)
    constitutions: list[Ev] = field(default_factory=list)
    prunes: list[Ev] = field(default_factory=list)
    audits: list[Ev] = field(default_factory=list)
    revocations: dict[str, Ev] = field(default_factory=dict)  # session id -> the event that revoked it
    checkpoints: list[StoredCheckpoint] = field(default_factory=list)
    verify: VerifyReport | None = None
    unreadable: list[int] = field(default_factory=list)  # seqs whose payload is not its event's JSON
    texts: dict[int, str] = field(default_factory=dict)  # event times (microseconds) as written (iso_us)
    _tasks: dict[str, str | None] = field(default_factory=dict)
    _parents: dict[str, str | None] = field(default_factory=dict)
    _last: int = 0
    _verify_args: tuple[Any, ...] = ()

    def verified(self) -> VerifyReport:
        """The verify report of the entries read (computed here, on demand, when the scan did not)."""
        if self.verify is None:
            path, durable, verifier, origin = self._verify_args
            self.verify = verify_file(
                path,
                self._last,
                checkpoints=self.checkpoints,
                verifier=verifier,
                origin=origin,
                durable=durable,
            )
        return self.verify

    def release(self) -> None:
        """Let go of what only the tree and its findings read (every entry and payload, the fold's
        states), keeping what re-runs and the report's header read (each stream's request and
        decision, the contexts, constitutions, prunes, audits, checkpoints): the audit frees the
        decoded ledger while its helper finishes, not after."""
        self.firsts = {k: v for k, v in self.firsts.items() if k[1] in RAW_TYPES}
        self.events, self.by_stream, self.states = [], defaultdict(list), DictSessions()
        self.texts, self.revocations = {}, {}

    def at(self, ev: Ev) -> str:
        """The entry's time as the ledger writes it (`iso_us`, written once per scan)."""
        return text_of(self.texts, ev.at_us)

    def in_window(self, stream: str, window: tuple[int, int]) -> bool:
        """Whether the stream's first entry lies in `window` (microseconds, start included)."""
        events = self.by_stream.get(stream)
        return bool(events) and window[0] <= events[0].at_us < window[1]  # type: ignore[index]

    def first(self, stream: str, type_: str) -> Ev | None:
        return self.firsts.get((stream, type_))

    def all(self, stream: str, *types: str) -> list[Ev]:
        return [e for e in self.by_stream.get(stream, ()) if e.type in types]

    def terminal(self, stream: str) -> Ev | None:
        return next((e for e in self.by_stream.get(stream, ()) if e.type in TERMINAL_TYPES), None)

    def task_of(self, stream: str) -> str | None:
        """The task a stream belongs to: from its decision, request, spawn, or pruned snapshot."""
        if stream not in self._tasks:
            self._tasks[stream] = self._task_of(stream)
        return self._tasks[stream]

    def _task_of(self, stream: str) -> str | None:
        for e in self.by_stream.get(stream, ()):
            d = e.data
            if d is None:
                continue
            if e.type in ("gate.decided", "agent.spawned") and d.get("task_id"):
                return str(d["task_id"])
            if e.type == "delegation.requested" and isinstance(d.get("request"), dict):
                task = d["request"].get("task_id")
                if isinstance(task, str) and task:
                    return task
        state = self.states.get(stream)
        return (state or {}).get("task_id") or None

    def parent_of(self, stream: str) -> str | None:
        if stream not in self._parents:
            self._parents[stream] = self._parent_of(stream)
        return self._parents[stream]

    def _parent_of(self, stream: str) -> str | None:
        for type_ in ("gate.decided", "delegation.requested", "agent.spawned"):
            e = self.first(stream, type_)
            if e is not None and e.data is not None:
                return e.data.get("parent_session_id")
        state = self.states.get(stream)
        return None if state is None else state.get("parent_session_id")


#: the entries a re-run reads (the helper keeps their stored payloads: `Captured`)
RAW_TYPES = frozenset({"gate.decided", "delegation.requested", "constitution.loaded"})


def decode_payload(payload: bytes | None, type_: str) -> tuple[dict[str, Any] | None, bool]:
    """(the payload decoded, whether it is unreadable), as the scan's read decodes it: None for a
    pruned payload, and for one that is not its event's JSON object (then unreadable)."""
    if payload is None:
        return None, False
    try:
        data = orjson.loads(payload)  # canonical UTF-8 bytes; what orjson refuses goes to the stdlib below
    except ValueError:
        try:  # NaN, a huge integer: JSON to Python's parser, not to orjson's
            data = load_payload(payload)
        except ValueError:  # bytes changed behind the chain's back: verify names the entry
            return None, True
    if data is not None and (type(data) is not dict or data.get("type") != type_):
        return None, True
    return data, False


class Captured:
    """The RAW_TYPES entries a read goes past, as (seq, time, stored payload): the first of each
    (stream, type), and every constitution.loaded. What the helper re-runs decisions from, taken on
    its own read while it verifies (the same entries the scan indexes as `firsts` and `constitutions`)."""

    def __init__(self) -> None:
        self.firsts: dict[tuple[str, str], tuple[int, int, bytes | None]] = {}
        self.constitutions: list[tuple[int, str, int, bytes | None]] = []

    def rows(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """Hand `rows` on, keeping what the re-runs read."""
        names: dict[Any, str] = {}
        firsts, constitutions = self.firsts, self.constitutions
        for row in rows:
            t = names.get(row[2])
            if t is None:
                t = names[row[2]] = _text(row[2])
            if t in RAW_TYPES:
                seq, stream, _, at, payload = row[:5]
                s = names.get(stream)
                if s is None:
                    s = names[stream] = _text(stream)
                if t == "constitution.loaded":
                    constitutions.append((seq, s, at, payload))
                elif (s, t) not in firsts:
                    firsts[(s, t)] = (seq, at, payload)
            yield row


def _read(out: LedgerScan, rows: Iterable[tuple[Any, ...]], decisions: list[Ev]) -> Iterator[tuple[Any, ...]]:
    """Index every stored row into `out` while handing it on (to the verifier, when it runs here)."""
    loads = orjson.loads  # canonical UTF-8 bytes; what orjson refuses goes to the stdlib below
    kept = {
        "gate.decided": decisions,
        "constitution.loaded": out.constitutions,
        "ledger.pruned": out.prunes,
        "audit.issued": out.audits,
    }
    names: dict[Any, str] = {}  # stored names come as bytes (see sqlite_store.iter_rows): decoded once
    events, by_stream, firsts = out.events, out.by_stream, out.firsts
    unreadable = out.unreadable
    new = tuple.__new__  # an Ev without the Python-level __new__ of a named tuple
    for row in rows:
        seq, stream, type_, at, payload, _salt, _phash, h = row
        s = names.get(stream)
        if s is None:
            s = names[stream] = _text(stream)
        t = names.get(type_)
        if t is None:
            t = names[type_] = _text(type_)
        data = None
        if payload is not None:
            try:
                data = loads(payload)
            except ValueError:
                try:  # NaN, a huge integer: JSON to Python's parser, not to orjson's
                    data = load_payload(payload)
                except ValueError:  # bytes changed behind the chain's back: verify names the entry
                    unreadable.append(seq)
            if data is not None and (type(data) is not dict or data.get("type") != t):
                unreadable.append(seq)
                data = None
        ev = new(Ev, (seq, s, t, at, h, data))
        events.append(ev)
        by_stream[s].append(ev)
        key = (s, t)
        if key not in firsts:
            firsts[key] = ev
        if t in kept:
            kept[t].append(ev)
        yield row


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if type(value) is bytes else str(value)


def verify_file(
    path: Path,
    last: int,
    *,
    checkpoints: Sequence[StoredCheckpoint],
    verifier: Verifier | None,
    origin: str | None,
    durable: bool = True,
    capture: Captured | None = None,
) -> VerifyReport:
    """Verify entries 1..last of the ledger at `path` on a connection of its own; `capture`: keep what
    the re-runs read on the way (every entry is read, even past the first problem)."""
    conn = store.connect(path, durable=durable, readonly=True)
    try:
        rows = store.iter_rows(conn, until=last)
        if capture is None:
            return verify_rows(rows, checkpoints=checkpoints, verifier=verifier, origin=origin)
        reader = capture.rows(rows)
        report = verify_rows(reader, checkpoints=checkpoints, verifier=verifier, origin=origin)
        for _ in reader:  # verify stops at the first problem: the capture still reads everything
            pass
        return report
    finally:
        conn.close()


class ScanPoint(NamedTuple):
    """What a scan reads and verifies: entries 1..last of the file, against these checkpoints."""

    path: Path
    durable: bool
    last: int
    checkpoints: list[StoredCheckpoint]
    verifier: Verifier | None
    origin: str | None

    @classmethod
    def of(cls, ledger: Ledger) -> ScanPoint:
        checkpoints = ledger.checkpoints()  # read first: each one is then within the entries read
        return cls(
            ledger.path, ledger.durable, ledger.head().size, checkpoints, ledger.verifier(), ledger.origin
        )

    def verify(self, capture: Captured | None = None) -> VerifyReport:
        """The verify of entries 1..last (on a connection of its own), capturing on the way if asked."""
        return verify_file(
            self.path,
            self.last,
            checkpoints=self.checkpoints,
            verifier=self.verifier,
            origin=self.origin,
            durable=self.durable,
            capture=capture,
        )


def scan(ledger: Ledger, *, verify: bool = True, point: ScanPoint | None = None) -> LedgerScan:
    """Read the whole chain once: verify it (every link, payload hash and checkpoint, recomputed) while
    indexing and folding it, and capture each decision's context as of the ledger head it recorded.
    The entries are 1..the head when the scan starts (or `point`'s), on a read-only connection of the
    scan's own. With `verify=False` nothing is verified while reading (`verified()` then verifies on
    demand)."""
    point = point or ScanPoint.of(ledger)
    checkpoints, last, verifier, origin = point.checkpoints, point.last, point.verifier, point.origin
    out = LedgerScan(head=Head(0, bytes(32), 0), checkpoints=checkpoints)
    out._last = last
    out._verify_args = (point.path, point.durable, verifier, origin)
    decisions: list[Ev] = []
    conn = store.connect(point.path, durable=point.durable, readonly=True)
    try:
        reader = _read(out, store.iter_rows(conn, until=last, hashes_only=not verify), decisions)
        if verify:
            out.verify = verify_rows(reader, checkpoints=checkpoints, verifier=verifier, origin=origin)
        for _ in reader:  # verify stops at the first problem: the audit still reads everything
            pass
    finally:
        conn.close()
    if out.events:
        last_ev = out.events[-1]
        out.head = Head(last_ev.seq, last_ev.hash_bytes, last_ev.at_us)
    capture: dict[int, list[tuple[Ev, bool]]] = defaultdict(list)
    heads = _Heads(out.events)
    for d in decisions:
        head_hash = (((d.data or {}).get("verdict") or {}).get("ledger_head")) or ""
        try:
            at = heads.seq(bytes.fromhex(head_hash), d.seq)
        except ValueError:
            at = None
        found = at is not None and at < d.seq
        # without a recorded head, the state just before the decision is the best approximation
        capture[at if found else d.seq - 1].append((d, found))  # type: ignore[index]
    _fold(out, capture)
    return out


class _Heads:
    """The seq of the entry with a given hash, for the ledger heads decisions recorded: looked for just
    before the decision first (where the engine's head almost always is: its request, a few entries
    back), then in an index of every hash, built once if ever needed."""

    NEAR = 16

    def __init__(self, events: list[Ev]) -> None:
        self.events = events
        self._index: dict[bytes, int] | None = None

    def seq(self, head: bytes, before: int) -> int | None:
        events = self.events
        i = min(before - 2, len(events) - 1)  # events[i] is entry i + 1 in a chain read from seq 1
        for k in range(i, max(i - self.NEAR, -1), -1):
            if events[k].hash_bytes == head:
                return events[k].seq
        if self._index is None:
            self._index = {ev.hash_bytes: ev.seq for ev in events}
        return self._index.get(head)


def _fold(out: LedgerScan, capture: dict[int, list[tuple[Ev, bool]]]) -> None:
    store = out.states
    apply = _Projector(out.texts).apply
    revoked: set[str] = set()
    projected = PROJECTED_TYPES
    revocations = out.revocations
    counted = COUNTED_TYPES  # the audit reads no count: of these, only what the projector would refuse
    for ev in out.events:
        if ev.type in projected:
            try:
                if ev.type in counted:
                    if ev.data is not None:
                        hash(ev.data["session_id"])  # the projector's one read of them (KeyError, TypeError)
                else:
                    apply(store, ev.stream, ev.type, ev.data, ev.at_us)
                    if ev.data is not None and ev.type in _REVOKING:
                        _revoked(store, ev, revoked, revocations)
            except (KeyError, TypeError, ValueError, AttributeError):  # a payload tampered into another shape
                out.unreadable.append(ev.seq)
        if ev.seq in capture:
            for decision, found in capture[ev.seq]:
                out.contexts[decision.stream] = _context(store, decision, ev.seq if found else None, revoked)
    for decision, _found in capture.get(0, ()):
        out.contexts[decision.stream] = _context(store, decision, None, set())


_REVOKING = frozenset({"delegation.revoked", "ledger.pruned"})


def _revoked(store: DictSessions, ev: Ev, revoked: set[str], revocations: dict[str, Ev]) -> None:
    """The sessions `ev` (a revocation, or a prune's snapshot) leaves revoked."""
    assert ev.data is not None
    if ev.type == "delegation.revoked":
        for sid in (ev.data["session_id"], *ev.data.get("subtree", [])):
            if (store.get(sid) or {}).get("revoked"):
                revoked.add(sid)
                revocations.setdefault(sid, ev)
    else:
        revoked.update(s["session_id"] for s in ev.data["sessions"] if s["state"].get("revoked"))


def _context(store: DictSessions, decision: Ev, head_seq: int | None, revoked: set[str]) -> ContextAt:
    """The decision's parents as the fold shows them at this point, and which of them are revoked."""
    parent = (decision.data or {}).get("parent_session_id")
    chain: list[AncestorAt] = []
    seen: set[str] = set()
    broken = None
    while parent:
        if parent in seen:
            broken = f"the parent chain loops at {parent}"
            break
        seen.add(parent)
        state = store.get(parent)
        if state is None:
            broken = f"parent session {parent} is unknown to the ledger at that point"
            break
        chain.append(
            AncestorAt(
                parent,
                bool(state.get("revoked")),
                state.get("max_tokens"),
                state.get("max_cost_usd"),
                int(state.get("subtree_tokens") or 0),
                float(state.get("subtree_cost_usd") or 0.0),
            )
        )
        parent = state.get("parent_session_id")
    on_path = frozenset(a.session_id for a in chain if a.session_id in revoked)
    return ContextAt(head_seq, tuple(reversed(chain)), on_path, broken)
