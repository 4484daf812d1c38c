"""Verify on two cores: the chain half here, the payload half in a stand-alone worker process.

The two halves share nothing but the database: this process opens a read snapshot, reads the last
seq, starts `payload_check.py` on entries 1..last (payload hashes, and the Merkle roots at the
checkpoints' sizes) and walks the headers, links and checkpoint heads and signatures of the same
entries meanwhile; the signed roots are then compared with the worker's. A clean ledger gets the same report as the sequential verifier, in
about half the time on a large file. Whenever either half finds a problem, or the worker fails in
any way, the sequential verifier runs instead: it alone decides and explains every break, so a
tampered ledger gets exactly the report it always got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ledger import chain
from ledger import sqlite_store as store
from ledger.checkpoint import Verifier
from ledger.verify import StoredCheckpoint, VerifyReport, verify_rows

#: below this many entries a worker's start (tens of milliseconds) is not worth it
PARALLEL_MIN_ENTRIES = 100_000
WORKER = Path(__file__).with_name("payload_check.py")
#: the verify's read connections stream each page once: a small cache keeps its memory flat
VERIFY_CACHE_KIB = 2000
#: the chain half has finished when this starts counting: the payload half is the lighter one
WORKER_TIMEOUT_S = 600


def verify_database(
    path: Path,
    *,
    checkpoints: Sequence[StoredCheckpoint],
    verifier: Verifier | None,
    origin: str | None,
    progress: Callable[[int], None] | None = None,
    parallel: bool | None = None,
    min_entries: int = PARALLEL_MIN_ENTRIES,
    python: str = sys.executable,
) -> VerifyReport:
    """Verify the ledger file at `path`: in parallel when it is large and there is a second core
    (`parallel=None`), always (`True`, any size) or never (`False`)."""
    kwargs = {"checkpoints": checkpoints, "verifier": verifier, "origin": origin, "progress": progress}
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1
    elif parallel:
        min_entries = 1
    conn = store.connect(path, readonly=True, cache_kib=VERIFY_CACHE_KIB)
    try:
        # one read snapshot serves the parallel attempt and, when needed, the sequential verify
        last = store.begin_snapshot(conn)
        why = None
        if parallel and last >= min_entries:
            report, why = _in_parallel(conn, path, last, python, kwargs)
            if report is not None:
                return report
        sequential = verify_rows(store.iter_rows(conn), **kwargs)
        if why:
            sequential.warnings.append(f"verified sequentially: {why}")
        return sequential
    finally:
        conn.close()


def _in_parallel(
    conn: Any, path: Path, last: int, python: str, kwargs: dict[str, Any]
) -> tuple[VerifyReport | None, str | None]:
    """(report, None) when both halves agree the ledger is intact; (None, None) when a half found a
    problem (the sequential verifier then names it); (None, why) when the worker failed."""
    sizes = ",".join(str(n) for n in sorted({cp.size for cp in kwargs["checkpoints"] if 0 < cp.size <= last}))
    try:
        worker = subprocess.Popen(
            [python, "-I", str(WORKER), str(path), str(last), chain.PAYLOAD_DOMAIN.hex(), sizes],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        return None, f"the payload worker could not start ({exc})"
    try:
        # the header rows carry no payloads, so the walk counts every one as pruned: the worker's count
        # replaces that below
        report = verify_rows(store.iter_header_rows(conn, last), merkle=False, **kwargs)
        if not report.ok:
            return None, None
        try:
            out, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"the payload worker did not finish within {WORKER_TIMEOUT_S} s"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    try:
        result = json.loads(out.strip().splitlines()[-1]) if worker.returncode == 0 else None
    except (ValueError, IndexError):
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("checked"), int):
        tail = (err or out or "").strip().splitlines()[-1:] or ["no output"]
        return None, f"the payload worker failed (exit {worker.returncode}: {tail[0]:.200})"
    if result.get("first_bad") is not None:
        return None, None
    if result["checked"] != report.entries:
        return None, (
            f"the payload worker saw {result['checked']} entries up to seq {last}, the chain walk "
            f"{report.entries}"
        )
    roots = result.get("roots") if isinstance(result.get("roots"), dict) else {}
    for size, signed_root in report.deferred_roots:
        if roots.get(str(size)) != signed_root.hex():
            return None, None  # a checkpoint whose root differs: the sequential verifier names it
    if report.deferred_roots:
        report.root = roots[str(max(size for size, _ in report.deferred_roots))]
    report.pruned = int(result.get("pruned") or 0)
    report.parallel = True
    rss = result.get("peak_rss_kib")
    report.worker_peak_rss_kib = rss if isinstance(rss, int) else None
    return report, None
