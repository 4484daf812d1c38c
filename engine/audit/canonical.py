"""The report's RFC 8785 (JCS) bytes: the same bytes as `ledger.canonical_bytes`, faster on reports.

`canonical_bytes` decides between a fast and an exact path by looking at the text: a number with
a fraction, or anything like one inside a string (every timestamp with fractional seconds, such
as "…:05.123Z"), sends the whole text down the exact path, which rewrites every token. An audit
report of a thousand hops is mostly such strings. Here the decision is made on the values
instead: one walk checks that every float prints the same in Python and in ECMAScript (integral
floats become ints, as JCS prints them) and every int is within +-(2**53 - 1); then the compact,
key-sorted `json` text is already canonical. Anything else (a float such as 1e-07, a key at or
above U+E000, a lone surrogate) goes to `canonical_bytes` itself. A test checks both agree.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ledger import canonical_bytes
from ledger.canonical import es_number

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
).encode
_HIGH_CHARS = re.compile("[\ue000-\U0010ffff]")
_MAX_INT = 2**53 - 1


class _NeedsExactError(Exception):
    """A value only the exact encoder can write."""


def _number(x: Any) -> Any:
    if type(x) is float:
        if x.is_integer() and abs(x) <= _MAX_INT:
            return int(x)
        text = repr(x)
        if es_number(text) != text:
            raise _NeedsExactError
    elif type(x) is int and abs(x) > _MAX_INT:
        raise _NeedsExactError
    return x


def _normalise(value: Any) -> None:
    """Turn integral floats into ints in place; _NeedsExactError when a number needs the exact encoder."""
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, x in items:
            t = type(x)
            if t is dict or t is list:
                stack.append(x)
            elif t is float or t is int:
                node[key] = _number(x)


def fast_canonical(value: dict[str, Any] | list[Any]) -> bytes:
    """canonical_bytes(value) for a JSON-ready report (integral floats in it become ints)."""
    try:
        _normalise(value)
    except _NeedsExactError:
        return canonical_bytes(value)
    try:
        text = _dumps(value)
    except (TypeError, ValueError):
        return canonical_bytes(value)  # raises PayloadError with the reason
    if not text.isascii() and _HIGH_CHARS.search(text):
        return canonical_bytes(value)  # key order by UTF-16 units: the exact encoder knows it
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return canonical_bytes(value)


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report's canonical bytes (what its SHA-256 is taken over)."""
    return fast_canonical(report)


def envelope_bytes(envelope: dict[str, Any], report: bytes) -> bytes:
    """canonical_bytes(envelope) given the report's canonical bytes: the other members are small."""
    others = {k: v for k, v in envelope.items() if k != "report"}
    parts = [(k, canonical_bytes(v)) for k, v in others.items()] + [("report", report)]
    if not all(k.isascii() for k, _ in parts):
        return canonical_bytes(dict(envelope))
    return b"{" + b",".join(canonical_bytes(k) + b":" + v for k, v in sorted(parts)) + b"}"
