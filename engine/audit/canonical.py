"""The report's RFC 8785 (JCS) bytes: the same bytes as `ledger.canonical_bytes`, faster on reports.

`canonical_bytes` decides between a fast and an exact path by looking at the text: a number with
a fraction, or anything like one inside a string (every timestamp with fractional seconds, such
as "…:05.123Z"), sends the whole text down the exact path, which rewrites every token. An audit
report of a thousand hops is mostly such strings. Here the decision is made on the values
instead, in one walk that also puts every object's members in key order (in place):

- every float must print the same in Python and in ECMAScript (integral floats become ints, as
  JCS prints them; NaN and infinities are refused by the exact path);
- every int must be within +-(2**53 - 1);
- every key must be a string below U+E000 (above, JCS orders by UTF-16 code units);
- containers are dicts and lists only.

The key-ordered value is then written by pydantic-core's serializer (Rust): compact, UTF-8,
escaping only `"`, `\\` and control characters (`\\b \\f \\n \\r \\t`, else lowercase `\\u00xx`),
exactly what JCS asks for, and floats in their shortest round-trip digits, which the walk has
checked to be the ECMAScript form. Anything else (a float such as 1e-07, a lone surrogate, a
tuple) goes to `canonical_bytes` itself. A property test checks both agree on arbitrary JSON.
"""

from __future__ import annotations

import re
from math import isfinite
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from ledger import canonical_bytes
from ledger.canonical import es_number

_HIGH_CHARS = re.compile("[\ue000-\U0010ffff]")
_MAX_INT = 2**53 - 1


class _NeedsExactError(Exception):
    """A value only the exact encoder can write."""


def _float(x: float) -> Any:
    if x.is_integer() and abs(x) <= _MAX_INT:
        return int(x)
    text = repr(x)
    if not isfinite(x) or es_number(text) != text:
        raise _NeedsExactError
    return x


def _prepare(value: Any) -> None:
    """In place: members of every object in key order, integral floats as ints; _NeedsExactError when
    a value needs the exact encoder."""
    stack = [value]
    pop, push = stack.pop, stack.append
    high = _HIGH_CHARS.search
    while stack:
        node = pop()
        if type(node) is dict:
            keys = [*node]
            try:
                joined = "".join(keys)  # TypeError: a key that is not a string
            except TypeError:
                raise _NeedsExactError from None
            if not joined.isascii() and high(joined):
                raise _NeedsExactError
            ordered = sorted(keys)
            if ordered != keys:
                members = [(k, node[k]) for k in ordered]
                node.clear()
                node.update(members)
            items: Any = node.items()
        else:
            items = enumerate(node)
        for key, x in items:
            t = type(x)
            if t is dict or t is list:
                push(x)
            elif t is int:
                if not -_MAX_INT <= x <= _MAX_INT:
                    raise _NeedsExactError
            elif t is float:
                node[key] = _float(x)
            elif t is not str and t is not bool and x is not None:
                raise _NeedsExactError  # a tuple, a subclass, an object: the exact encoder decides


def fast_canonical(value: dict[str, Any] | list[Any]) -> bytes:
    """canonical_bytes(value) for a JSON-ready report (reordered in place; integral floats become ints)."""
    try:
        _prepare(value)
        return to_json(value)
    except (_NeedsExactError, PydanticSerializationError, ValueError, TypeError):
        return canonical_bytes(value)  # the exact answer, or PayloadError with the reason


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
