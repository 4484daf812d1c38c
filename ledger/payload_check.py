"""The payload half of a verify, run beside the chain half on another core.

    python -I payload_check.py DB LAST_SEQ DOMAIN_HEX

Reads (seq, payload, salt, payload_hash) of entries 1..LAST_SEQ from the database, read-only, and
checks every retained payload against its salted, domain-separated hash. Prints one JSON line:
`{"checked": n, "pruned": p, "first_bad": seq or null, "peak_rss_kib": k}`. Standard library only, so the worker
starts in a few milliseconds and in little memory: it is run as a script, not imported through
the `ledger` package. The caller (ledger/verify_parallel.py) treats any other outcome as a failure
and falls back to the sequential verifier, which also explains any break in full.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys


def check_payloads(path: str, last_seq: int, domain: bytes) -> dict[str, int | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("PRAGMA cache_size=-2000")  # a stream: pages are read once
        cursor = conn.execute(
            "SELECT seq, payload, salt, payload_hash FROM entries WHERE seq <= ? ORDER BY seq", (last_seq,)
        )
        cursor.arraysize = 2000
        prefix = hashlib.sha256(domain)
        checked = pruned = 0
        for seq, payload, salt, phash in cursor:
            checked += 1
            if payload is None:
                pruned += 1
                continue
            h = prefix.copy()  # SHA-256 state after the domain tag
            if type(salt) is not bytes or type(payload) is not bytes:
                return {"checked": checked, "pruned": pruned, "first_bad": seq}
            h.update(salt)
            h.update(payload)
            if h.digest() != phash:
                return {"checked": checked, "pruned": pruned, "first_bad": seq}
        return {"checked": checked, "pruned": pruned, "first_bad": None}
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
    path, last_seq, domain_hex = argv
    result = check_payloads(path, int(last_seq), bytes.fromhex(domain_hex))
    result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
