"""The report's RFC 8785 (JCS) bytes: the same bytes as `ledger.canonical_bytes`, faster on reports.

A report of a thousand hops is some 180,000 JSON values. `orjson` with sorted keys writes JCS's
bytes for them (its string escapes are JCS's, its key order is JCS's below U+E000) in tens of
milliseconds; it differs from JCS only on numbers: a float must print as ECMAScript prints it,
and an integral float as an integer. So one walk looks at every number first:

- an int must be within +-(2**53 - 1);
- a float whose Python repr has no exponent, is finite and does not end in ".0" prints the same
  in Python, orjson and ECMAScript (same shortest digits, same layout); an integral float is
  turned into an int in place (the report builds its own numbers that way already, so this is
  rare); any other float (1e-07, NaN) sends the report to `canonical_bytes` itself;
- containers are dicts, lists and tuples; scalars are str, bool and None; anything else (a
  subclass, an object) goes to `canonical_bytes` too.

Keys at or above U+E000 (where code point and UTF-16 orders may part), a non-string key or a
lone surrogate also go to `canonical_bytes`, which decides. A property test checks both agree.

The audit skips that walk when it can show no number needs it (`screened_bytes`). Its numbers
come from two places. Recorded payloads: once the chain verifies, their bytes are the canonical
bytes the ledger wrote, where a number that decodes to a value orjson writes otherwise than JCS
shows a mark (`marked_seqs`: an exponent, a fixed notation below 1e-4, twenty digits in a row); an
integral float is written as an integer and decodes as one. The audit's helper looks for those
marks in every payload on its own read, off the audit's path, and the audit walks the decoded
values of the payloads that carry one (text or a hash may, by chance). And the audit's own
numbers: each goes through `number()`, which reports any float that needs the exact encoder to the
`Screen` in force. Anything else (no helper, a ledger that does not verify, a float `number()`
reported, a marked payload whose values need it) and the whole report is walked, as `seal` does.
Tests build every report both ways and compare the bytes (`LEDGER_AUDIT_SEAL_CHECK=1`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import accumulate
from typing import Any

import orjson

from ledger import canonical_bytes

_MAX_INT = 2**53 - 1
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
#: unwalked: what orjson would write of its own accord (dates, dataclasses, subclasses) is refused
_SCREENED = (
    _SORTED
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# UTF-8 lead bytes of U+E000..U+10FFFF: where code point and UTF-16 orders may part
_HIGH_LEADS = tuple(bytes((b,)) for b in range(0xEE, 0xF5))


def number(x: float) -> float | int:
    """A number as the report holds it: an integral float as the int JCS prints (no rewrite later);
    a float the encoder must write exactly is reported to the screen in force (see `Screen`)."""
    if type(x) is not float:
        return x
    if x.is_integer() and abs(x) <= _MAX_INT:
        return int(x)
    screen = _screen.get()
    if screen is not None and not _plain_float(x):
        screen.risky = True
    return x


def _plain_float(x: float) -> bool:
    """Whether orjson writes `x` as JCS does (see the module's docstring)."""
    r = repr(x)
    return "e" not in r and "n" not in r and not r.endswith(".0")


#: what shows, in canonical bytes, a number orjson may write otherwise than JCS once decoded: in the
#: bytes with every digit made "0" (`_CLASSES`), an exponent ("0e-0", "0e+0": below 1e-6, from
#: 1e21) or twenty digits in a row (from 1e19, past what decodes as an integer); in the bytes as they
#: are, a fixed notation below 1e-4 ("0.0000", where Python's repr turns to an exponent)
_MARKS = (b"0e-0", b"0e+0", b"0" * 20)
_SMALL = b"0.0000"
_CLASSES = bytes(c if c in b"e+-." else (0x30 if 0x30 <= c <= 0x39 else 0x20) for c in range(256))


def marked_seqs(payloads: Sequence[tuple[int, bytes]]) -> list[int]:
    """The seqs of the (seq, canonical bytes) payloads that carry a mark (`_MARKS`): most often text
    or a hash that happens to (their decoded values are then walked); none, most often."""
    big = b"\n".join(p for _, p in payloads)
    starts = list(accumulate((len(p) + 1 for _, p in payloads), initial=0))
    found: set[int] = set()
    for buffer, marks in ((big.translate(_CLASSES), _MARKS), (big, (_SMALL,))):
        for mark in marks:
            at = buffer.find(mark)
            while at >= 0:
                index = bisect_right(starts, at) - 1
                found.add(index)
                at = buffer.find(mark, starts[index + 1])  # on to the next payload
    return sorted(payloads[i][0] for i in found)


class Screen:
    """What an audit learns, while it builds its report, about the numbers in it (`screened`)."""

    def __init__(self) -> None:
        self.risky = False  # a float of the audit's own needs the exact encoder


_screen: ContextVar[Screen | None] = ContextVar("audit_screen", default=None)


@contextmanager
def screened() -> Iterator[Screen]:
    """A screen for the report built within (`number()` reports to it; per thread and task)."""
    screen = Screen()
    token = _screen.set(screen)
    try:
        yield screen
    finally:
        _screen.reset(token)


class _NeedsExactError(Exception):
    """A value only the exact encoder can write."""


def _check_numbers(value: Any) -> bool:
    """True when some float is integral (to be rewritten as an int); _NeedsExactError when a value is
    not plain JSON or a number needs the exact encoder."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    integral = False
    while stack:
        v = pop()
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is dict:
            extend(v.values())
        elif t is list or t is tuple:
            extend(v)
        elif t is int:
            if not -_MAX_INT <= v <= _MAX_INT:
                raise _NeedsExactError
        elif t is float:
            r = repr(v)
            if "e" in r or "n" in r:  # an exponent, nan or inf: ECMAScript lays it out otherwise
                raise _NeedsExactError
            if r.endswith(".0"):
                if abs(v) > _MAX_INT:
                    raise _NeedsExactError
                integral = True
        else:
            raise _NeedsExactError
    return integral


def _integral_floats_to_ints(value: Any) -> None:
    """In place: every integral float becomes the int JCS prints (checked in range by the walk)."""
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, x in items:
            t = type(x)
            if t is dict or t is list:
                stack.append(x)
            elif t is float and x.is_integer():
                node[key] = int(x)
            elif t is tuple:
                raise _NeedsExactError  # cannot be rewritten in place


def fast_canonical(value: dict[str, Any] | list[Any]) -> bytes:
    """canonical_bytes(value) for a JSON-ready report (its integral floats become ints, in place)."""
    try:
        if _check_numbers(value):
            _integral_floats_to_ints(value)
    except _NeedsExactError:
        return canonical_bytes(value)  # the exact answer, or PayloadError with the reason
    return _encoded(value, _SORTED)


def screened_bytes(
    value: dict[str, Any], screen: Screen, chain_verified: bool, marked: Iterable[Any] | None
) -> bytes:
    """canonical_bytes(value) for a report built under `screen` from a chain that verified
    (`chain_verified`), whose payloads with a mark decoded to `marked` (None: not known): without the
    number walk when none of them needs it (see the module's docstring), else `fast_canonical`."""
    if screen.risky or not chain_verified or marked is None or not _plain_values(marked):
        return fast_canonical(value)
    return _encoded(value, _SCREENED)


def _plain_values(values: Iterable[Any]) -> bool:
    try:
        return not any(_check_numbers(v) for v in values)
    except _NeedsExactError:
        return False


def _encoded(value: Any, option: int) -> bytes:
    try:
        out = orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        return canonical_bytes(value)  # the exact answer, or PayloadError with the reason
    if not out.isascii() and any(lead in out for lead in _HIGH_LEADS):  # memchr, not a regex
        return canonical_bytes(value)  # a character at or above U+E000: key order by UTF-16 units
    return out


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report's canonical bytes (what its SHA-256 is taken over)."""
    return fast_canonical(report)


def envelope_bytes(envelope: dict[str, Any], report: bytes, end: bytes = b"") -> bytes:
    """canonical_bytes(envelope) + `end`, given the report's canonical bytes: the other members are
    small, and the report's bytes (megabytes) are copied once."""
    others = {k: v for k, v in envelope.items() if k != "report"}
    parts = [(k, canonical_bytes(v)) for k, v in others.items()] + [("report", report)]
    if not all(k.isascii() for k, _ in parts):
        return canonical_bytes(dict(envelope)) + end
    pieces = [b"{"]
    for i, (k, v) in enumerate(sorted(parts)):
        pieces += [b"," if i else b"", canonical_bytes(k), b":", v]
    pieces += [b"}", end]
    return b"".join(pieces)
