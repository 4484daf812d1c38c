"""The payload half of a verify, run beside the chain half on another core.

    python -I payload_check.py DB LAST_SEQ DOMAIN_HEX [SIZES]

Reads (seq, payload, salt, payload_hash, hash) of entries 1..LAST_SEQ from the database, read-only,
checks every retained payload against its salted, domain-separated hash, and computes the RFC 6962
Merkle root of the entry hashes at each of SIZES (comma-separated checkpoint sizes). Prints one
JSON line: `{"checked": n, "pruned": p, "first_bad": seq or null, "roots": {size: hex},
"peak_rss_kib": k}`. Standard library only (ledger/merkle.py is loaded by its path), so the worker
starts in a few milliseconds and in little memory: it is run as a script, not imported through the
`ledger` package. The caller (ledger/verify_parallel.py) treats any other outcome as a failure
and falls back to the sequential verifier, which also explains any break in full.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

MERKLE_BLOCK = 256


def _merkle_module() -> Any:
    spec = importlib.util.spec_from_file_location("_ledger_merkle", Path(__file__).with_name("merkle.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {Path(__file__).with_name('merkle.py')}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_payloads(
    path: str, last_seq: int, domain: bytes, sizes: frozenset[int] = frozenset()
) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("PRAGMA cache_size=-2000")  # a stream: pages are read once
        cursor = conn.execute(
            "SELECT seq, payload, salt, payload_hash, hash FROM entries WHERE seq <= ? ORDER BY seq",
            (last_seq,),
        )
        cursor.arraysize = 2000
        prefix = hashlib.sha256(domain)
        checked = pruned = 0
        merkle_until = max(sizes, default=0)
        tree = _merkle_module().CompactRange() if sizes else None
        leaves: list[bytes] = []
        roots: dict[str, str] = {}
        for seq, payload, salt, phash, h in cursor:
            checked += 1
            if seq <= merkle_until:
                if type(h) is not bytes or len(h) != 32:
                    return {"checked": checked, "pruned": pruned, "first_bad": seq}
                leaves.append(h)
                if len(leaves) == MERKLE_BLOCK:
                    tree.append_block(leaves)
                    leaves = []
                if seq in sizes:
                    at_size = tree.copy()
                    for leaf in leaves:
                        at_size.append(leaf)
                    roots[str(seq)] = at_size.root().hex()
            if payload is None:
                pruned += 1
                continue
            ph = prefix.copy()  # SHA-256 state after the domain tag
            if type(salt) is not bytes or type(payload) is not bytes:
                return {"checked": checked, "pruned": pruned, "first_bad": seq}
            ph.update(salt)
            ph.update(payload)
            if ph.digest() != phash:
                return {"checked": checked, "pruned": pruned, "first_bad": seq}
        return {"checked": checked, "pruned": pruned, "first_bad": None, "roots": roots}
    finally:
        conn.close()


def peak_rss_kib() -> int | None:
    """This process's peak resident memory (Linux), reported so a caller can account for it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str]) -> int:
    path, last_seq, domain_hex, *rest = argv
    sizes = frozenset(int(x) for x in rest[0].split(",") if x) if rest else frozenset()
    result = check_payloads(path, int(last_seq), bytes.fromhex(domain_hex), sizes)
    result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
