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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ledger import PayloadError, canonical_bytes

_MAX_INT = 2**53 - 1
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
# UTF-8 lead bytes of U+E000..U+10FFFF: where code point and UTF-16 orders may part
_HIGH_LEADS = tuple(bytes((b,)) for b in range(0xEE, 0xF5))


def number(x: float) -> float | int:
    """A number as the report holds it: an integral float as the int JCS prints (no rewrite later)."""
    return int(x) if type(x) is float and x.is_integer() and abs(x) <= _MAX_INT else x


class _NeedsExactError(Exception):
    """A value only the exact encoder can write."""


def _check_numbers(value: Any, partial: dict[int, tuple[str, ...]] | None = None) -> bool:
    """True when some float is integral (to be rewritten as an int); _NeedsExactError when a value is
    not plain JSON or a number needs the exact encoder. `partial`: dicts (by id) walked already but for
    the members named (`Prechecked`)."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    integral = False
    rest = partial.get if partial else None
    while stack:
        v = pop()
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is dict:
            keys = None if rest is None else rest(id(v))
            extend(v.values() if keys is None else [v[k] for k in keys if k in v])
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


def _rewrite(value: Any, new: Callable[[Any], Any]) -> bool:
    """In place: every scalar `new` gives a replacement for (None: kept as it is) is replaced; whether
    any was. _NeedsExactError for a tuple, which cannot be rewritten in place."""
    changed = False
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, x in items:
            t = type(x)
            if t is dict or t is list:
                stack.append(x)
            elif t is tuple:
                raise _NeedsExactError
            elif (replacement := new(x)) is not None:
                node[key] = replacement
                changed = True
    return changed


def _integral_float_as_int(x: Any) -> int | None:
    """The int JCS prints for an integral float (checked in range by the walk)."""
    return int(x) if type(x) is float and x.is_integer() else None


def _integral_floats_to_ints(value: Any) -> None:
    """In place: every integral float becomes the int JCS prints (checked in range by the walk)."""
    _rewrite(value, _integral_float_as_int)


def plain(value: Any) -> bool:
    """Whether `value`'s numbers need nothing of the encoder: no integral float to rewrite, none for
    the exact encoder (what `fast_canonical` would walk it for)."""
    try:
        return not _check_numbers(value)
    except _NeedsExactError:
        return False


class Prechecked:
    """Parts of a value whose numbers were walked ahead of its encoding (the audit does it while its
    helper finishes): `fast_canonical(value, prechecked)` then walks only what is left. Sound only
    while those parts stay as they were walked: the audit walks and encodes in one call."""

    def __init__(self) -> None:
        self.partial: dict[int, tuple[str, ...]] = {}
        self.exact = False  # some part needs the exact encoder: the whole value goes to it
        self._held: list[dict[str, Any]] = []  # keeps each walked dict alive, so its id stays its own

    def vouch(self, node: dict[str, Any]) -> None:
        """`node` needs no walk: walked elsewhere and found `plain` (the helper's re-runs, on its copy),
        or plain by construction (text, flags, ints the encoder refuses past 2**53 as the walk does)."""
        self.partial[id(node)] = ()
        self._held.append(node)

    def walk(self, node: dict[str, Any], rest: tuple[str, ...]) -> None:
        """Walk every member of `node` but those named in `rest` (walked later with the whole)."""
        if self.exact:
            return
        try:
            integral = _check_numbers([v for k, v in node.items() if k not in rest])
        except _NeedsExactError:
            self.exact = True
            return
        if not integral:  # one to rewrite: left to the whole walk, which rewrites in place
            self.partial[id(node)] = rest
            self._held.append(node)


def fast_canonical(value: dict[str, Any] | list[Any], prechecked: Prechecked | None = None) -> bytes:
    """canonical_bytes(value) for a JSON-ready report (its integral floats become ints, in place);
    `prechecked`: the parts of it whose numbers were walked already."""
    if prechecked is not None and prechecked.exact:
        return exact_bytes(value)
    try:
        if _check_numbers(value, None if prechecked is None else prechecked.partial):
            _integral_floats_to_ints(value)
        out = orjson.dumps(value, option=_SORTED)
    except (_NeedsExactError, orjson.JSONEncodeError):
        return exact_bytes(value)  # the exact answer, or PayloadError with the reason
    if not out.isascii() and any(lead in out for lead in _HIGH_LEADS):  # memchr, not a regex
        return exact_bytes(value)  # a character at or above U+E000: key order by UTF-16 units
    return out


def exact_bytes(value: Any) -> bytes:
    """canonical_bytes(value), where an integer past 2**53 that JCS writes as a double's digits is
    made that double (in place). JCS writes a float from 1e16 on as bare digits (its shortest ones,
    then zeros), so a recorded payload's 1e18 decodes as the integer 10**18, which `canonical_bytes`
    refuses: an audit would fail on any ledger holding one (a request's budget, say). As the double,
    it is written with the digits it was recorded with. PayloadError for what is still not JSON (an
    integer written otherwise, from bytes changed behind the chain's back)."""
    try:
        return canonical_bytes(value)
    except PayloadError:
        if not _big_ints_to_floats(value):
            raise
        return canonical_bytes(value)


def _big_ints_to_floats(value: Any) -> bool:
    """In place: every integer past +-(2**53 - 1) whose digits are those JCS writes for the nearest
    double becomes that double; whether any did (none inside a tuple, which cannot be rewritten)."""
    try:
        return _rewrite(value, _recorded_double)
    except _NeedsExactError:
        return False


def _recorded_double(x: Any) -> float | None:
    """The double an integer past 2**53 was recorded as, when JCS writes that double with its digits."""
    if type(x) is not int or -_MAX_INT <= x <= _MAX_INT:
        return None
    try:
        as_float = float(x)
        return as_float if canonical_bytes(as_float) == str(x).encode() else None
    except (OverflowError, PayloadError):
        return None


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
