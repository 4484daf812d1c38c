"""The report's RFC 8785 bytes, assembled from `ledger.canonical_bytes` of its parts.

`canonical_bytes` has a fast path for JSON without fractional numbers; one cost figure anywhere
in a large report sends the whole text down the exact path, which rewrites every number token
and is slow on a report of thousands of hops. A JSON object's canonical form is its members in
key order, so the report is canonicalised part by part: each hop without its `budget` (the part
holding fractions) and `children`, then those spliced back in their place. The result is
byte-for-byte `canonical_bytes(report)` (a test checks it); any doubt falls back to that.
"""

from __future__ import annotations

from typing import Any

from ledger import canonical_bytes

#: 15 digits: below the fast path's 16-digit integer check; each split member gets its own value
_SENTINEL = 987_654_321_012_000


def _assemble(obj: dict[str, Any], parts: dict[str, bytes]) -> bytes:
    """canonical_bytes(obj), with the members named in `parts` given as canonical bytes already."""
    if not all(isinstance(k, str) and k.isascii() for k in obj):
        return canonical_bytes(obj)  # non-ASCII keys: ordering by UTF-16 units, leave it to the encoder
    stand_in = {**obj, **{k: _SENTINEL + i for i, k in enumerate(parts)}}
    text = canonical_bytes(stand_in)
    for i, (key, value) in enumerate(parts.items()):
        marker = canonical_bytes(key) + b":" + str(_SENTINEL + i).encode()
        if text.count(marker) != 1:
            return canonical_bytes(obj)
        text = text.replace(marker, canonical_bytes(key) + b":" + value)
    return text


def _list(items: list[Any], each: Any) -> bytes:
    return b"[" + b",".join(each(x) for x in items) + b"]"


def hop_bytes(hop: dict[str, Any]) -> bytes:
    parts = {"budget": canonical_bytes(hop["budget"]), "children": _list(hop["children"], hop_bytes)}
    return _assemble(hop, parts)


def report_bytes(report: dict[str, Any]) -> bytes:
    """canonical_bytes(report), computed part by part (see the module docstring)."""
    parts = {"tree": _list(report["tree"], hop_bytes),
             "findings": _list(report["findings"], canonical_bytes),
             "refused": _list(report["refused"], canonical_bytes)}
    return _assemble(report, parts)


def envelope_bytes(envelope: dict[str, Any], report: bytes) -> bytes:
    """canonical_bytes(envelope), given the report's canonical bytes."""
    return _assemble(envelope, {"report": report})
