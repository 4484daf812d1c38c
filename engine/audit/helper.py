"""The audit's helper on the second core: what it is handed, what it does, how its answer is taken.

The worker process itself (forking it once, its inbox, hurrying it, reading its answer) is
`engine/audit/forked.py`; this module is the audit's side: a `Helper` has the worker verify the
chain on its own read, keep what re-runs read (`scan.Captured`) and prepare a `Rerunner` over it
while the audit scans; `Reruns` hands it a share of the decisions and takes back what it did.
Whatever it fails to do is done in the audit's process, with the same result.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import gate
from engine.audit import forked
from engine.audit.canonical import plain
from engine.audit.rerun import Requests, Rerunner, Rulebook
from engine.audit.scan import AncestorAt, Captured, ContextAt, Ev, LedgerScan, ScanPoint, decode_payload
from ledger import VerifyReport
from ledger.entry import Head

#: below this many entries in the ledger no helper is used: handing it the work and taking its answer
#: cost more
FORK_MIN_ENTRIES = 2000
#: below this many decisions none is handed to the helper (it only verifies)
FORK_MIN_RERUNS = 200
#: the share of the re-runs handed to the helper: all of them (measured best: this process builds
#: every hop of the tree meanwhile, then re-runs what the helper has not done when told to hurry)
CHILD_SHARE = 1.0
#: room for the helper's task and input (streams and contexts, pickled); memory is only made as used
INBOX_BYTES = 1 << 30
#: the helper's name among this process's workers (forked.lease)
WORKER = "audit-helper"


class Helper:
    """The worker (see forked.py) given one audit's work: it verifies the chain on a read of its own
    while this process reads, decodes and folds it, keeping on the way the entries re-runs read
    (`Captured`), which it decodes and validates while the scan goes on; then it re-runs the
    decisions it is handed (their streams and rebuilt contexts: small) while this process builds the
    tree. It answers (the verify report, the re-runs); whatever it fails to answer is done here."""

    def __init__(self, worker: forked.Worker) -> None:
        self.worker = worker
        self._over = False

    @classmethod
    def start(cls, point: ScanPoint, current: gate.Constitution, source: str | None) -> Helper | None:
        """A helper for the scan of `point` (None when no worker can serve here, or the ledger is
        small: the scan then verifies, and every re-run is done in this process)."""
        if point.last < FORK_MIN_ENTRIES:
            return None
        worker = forked.lease(WORKER, _handle, inbox=INBOX_BYTES)
        if worker is None:
            return None
        if not worker.begin((point, current, source), allowance_s=10.0 + 0.002 * point.last):
            forked.give_back(worker)
            return None
        return cls(worker)

    def send(self, scan: LedgerScan, streams: list[str]) -> bool:
        """Hand the helper the re-runs of `streams` (none: it answers its verify alone); False when it
        cannot take them (they are then re-run here)."""
        if not streams:
            self.worker.send(None)
            return False
        return self.worker.send(_job(scan, streams))

    def result(self) -> tuple[VerifyReport | None, list[tuple[dict[str, Any], bool]] | None]:
        """(its verify report, the re-runs it did: the first ones of those it was sent, maybe not all,
        each with whether its numbers are plain; None for what it failed to answer). It is told to
        hurry: it stops after its current batch."""
        self.worker.hurry()
        answer = self.worker.result()
        self._give_back()
        if not isinstance(answer, tuple) or len(answer) != 2:
            return None, None
        verify, batches = answer
        try:
            reruns = [(r, ok) for batch, ok in map(pickle.loads, batches) for r in batch]
        except Exception:  # not the batches it sends: its re-runs are done here
            reruns = None
        return (verify if isinstance(verify, VerifyReport) else None), reruns

    def close(self) -> None:
        """Give up on the helper's answer if it is not in yet (e.g. when the audit fails meanwhile): the
        worker is killed and reaped (a later audit forks another)."""
        if not self._over:
            self.worker.retire()
            self._give_back()

    def _give_back(self) -> None:
        if not self._over:
            self._over = True
            forked.give_back(self.worker)


def _handle(
    task: tuple[ScanPoint, gate.Constitution, str | None],
    receive: Callable[[], Any],
    hurried: Callable[[], bool],
) -> tuple[VerifyReport, list[bytes] | None]:
    """In the worker, one audit's work: verify (capturing what re-runs read), prepare the re-runner,
    then re-run the decisions handed over until done or hurried."""
    point, current, source = task
    captured = Captured()
    verify = point.verify(captured)
    prepared = _prepare(captured, current, source)  # while the audit still scans
    job = receive()
    return verify, None if job is None else _rerun_job(job, prepared, hurried)


def _job(scan: LedgerScan, streams: list[str]) -> tuple[Any, ...]:
    """What the helper needs besides what it read itself to re-run `streams`: their contexts as the
    fold rebuilt them, in plain values."""
    contexts: dict[str, tuple[Any, ...]] = {}
    for s in streams:
        ctx = scan.contexts.get(s)
        if ctx is not None:
            parents = tuple(
                (a.session_id, a.revoked, a.max_tokens, a.max_cost_usd, a.subtree_tokens, a.subtree_cost_usd)
                for a in ctx.parents
            )
            contexts[s] = (ctx.head_seq, parents, tuple(ctx.revoked), ctx.broken_ancestry)
    return streams, contexts


#: the helper looks whether it is hurried after each batch of this many re-runs (some milliseconds)
HURRY_BATCH = 25


def _prepare(captured: Captured, current: gate.Constitution, source: str | None) -> Rerunner:
    """In the helper, before its input comes: a re-runner over what it read (payloads decoded as the
    scan decodes them, every request validated once), lacking only the contexts."""
    sub = LedgerScan(head=Head(0, bytes(32), 0))
    for (s, t), (seq, at, payload) in captured.firsts.items():
        sub.firsts[(s, t)] = Ev(seq, s, t, at, b"", decode_payload(payload, t)[0])
    for seq, stream, at, payload in captured.constitutions:
        t = "constitution.loaded"
        sub.constitutions.append(Ev(seq, stream, t, at, b"", decode_payload(payload, t)[0]))
    requests = Requests(sub)
    for s, t in captured.firsts:
        if t == "delegation.requested":
            requests.model(s)
    return Rerunner(sub, requests, Rulebook.from_scan(sub, current, source))


def _rerun_job(job: tuple[Any, ...], rerunner: Rerunner, hurried: Callable[[], bool]) -> list[bytes]:
    """In the helper: the re-runs of a `_job` with the `_prepare`d re-runner, in order, until done or
    hurried (then the first ones only), pickled batch by batch as they are done, each with whether
    its numbers are plain (`canonical.plain`: the report's encoder need not walk them again)."""
    streams, contexts = job
    for s, (head_seq, parents, revoked, broken) in contexts.items():
        rerunner.scan.contexts[s] = ContextAt(
            head_seq, tuple(AncestorAt(*a) for a in parents), frozenset(revoked), broken
        )
    done: list[bytes] = []
    for i in range(0, len(streams), HURRY_BATCH):
        if i and hurried():
            break
        batch = [rerunner.rerun(s) for s in streams[i : i + HURRY_BATCH]]
        # ready when hurried; with whether its numbers need nothing of the encoder (walked here)
        done.append(pickle.dumps((batch, plain(batch)), protocol=pickle.HIGHEST_PROTOCOL))
    return done


class Reruns:
    """Re-runs under way: a share handed to the helper (if any), the rest done here on demand."""

    def __init__(self, rerunner: Rerunner, streams: list[str], helper: Helper | None = None) -> None:
        self.rerunner = rerunner
        self.helper = helper
        self.plain: set[str] = set()  # streams whose re-run the helper found plain in numbers
        cut = int(len(streams) * CHILD_SHARE) if helper is not None and len(streams) >= FORK_MIN_RERUNS else 0
        self.theirs, self.ours = streams[:cut], streams[cut:]
        if helper is not None and not helper.send(rerunner.scan, self.theirs):
            self.theirs, self.ours = [], streams

    def result(self) -> dict[str, dict[str, Any]]:
        """Every stream's re-run (the helper's share re-run here if it failed); the helper's verify
        report becomes the scan's (else the scan verifies when asked)."""
        rerun = self.rerunner.rerun
        done = {s: rerun(s) for s in self.ours}
        if self.helper is not None:
            verify, answer = self.helper.result()
            if verify is not None and self.rerunner.scan.verify is None:
                self.rerunner.scan.verify = verify
            if self.theirs:
                theirs = (answer or [])[: len(self.theirs)]  # the first ones, as many as it did
                for s, (r, ok) in zip(self.theirs, theirs, strict=False):
                    done[s] = r
                    if ok:
                        self.plain.add(s)
                done.update((s, rerun(s)) for s in self.theirs[len(theirs) :])
        return done
