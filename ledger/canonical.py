"""RFC 8785 (JCS) canonical JSON, with a checked fast path.

`rfc8785.dumps` is exact but costs about 30 us for a 300-byte payload. `orjson` with sorted keys
writes the same bytes in well under a microsecond for most payloads (its string escapes are JCS's),
and the stdlib encoder with sorted keys and compact separators in about 4 us. They differ from JCS
only on (a) floats (ECMAScript number formatting; orjson also writes NaN as null), (b) integers
beyond 2**53 (refused by JCS) and (c) key order when keys hold characters at or above U+E000 (JCS
sorts by UTF-16 code units). So one walk over the value looks at every number first: when every
float already prints as ECMAScript does and no integer is out of range, orjson's bytes are taken
(unless they hold such characters); otherwise the stdlib path, which rewrites float tokens, or the
exact encoder runs. A property test checks the result equals `rfc8785` on arbitrary JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import rfc8785

from ledger.errors import PayloadError

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=True
).encode
# A digit followed by a fraction/exponent mark or by 15 more digits: a float or a big integer MAY be
# there (strings match too; the JSON scanner then decides on the real number tokens).
_MAYBE_NUMBER = re.compile(r"[0-9](?:[.eE]|[0-9]{15})")
_MAX_SAFE = 2**53 - 1
_HIGH_CHARS = re.compile("[\ue000-\U0010ffff]")
# Strings (skipped as they are) or a float token as Python's repr wrote it.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)')
# UTF-8 lead bytes of U+E000..U+10FFFF: where code point and UTF-16 orders may part
_HIGH_LEAD = re.compile(b"[\xee-\xf4]")
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_PLAIN, _FLOATS, _OTHER = 0, 1, 2
_WALK_BUDGET = 1_000_000


def es_number(token: str) -> str:
    """ECMAScript Number::toString of the float whose Python repr is `token` (RFC 8785 section 3.2.2.3).

    Python's repr and ECMAScript both print the shortest digits that round-trip; only the layout
    differs (where the decimal point goes and when to switch to exponent notation).
    """
    value = float(token)
    if value == 0:
        return "0"
    sign = "-" if token[0] == "-" else ""
    body = token.lstrip("-")
    mantissa, _, exp_text = body.partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # n: position of the decimal point relative to the first significant digit (value = 0.d1d2... x 10^n)
    n = len(whole) + exponent if whole.strip("0") else exponent - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + out


def _number_tokens(text: str) -> str:
    """'ok' when every number token is already in JCS form, 'floats' when a float must be rewritten,
    'big' when an integer lies beyond 2**53 - 1. Uses the C JSON scanner, which sees only real tokens."""
    state = ["ok"]

    def on_float(token: str) -> float:
        if state[0] == "ok" and es_number(token) != token:
            state[0] = "floats"
        return 0.0

    def on_int(token: str) -> int:
        if len(token) > 15 and abs(int(token)) > _MAX_SAFE:
            state[0] = "big"
        return 0

    json.loads(text, parse_float=on_float, parse_int=on_int)
    return state[0]


def _fix_numbers(match: re.Match[str]) -> str:
    token = match.group(1)
    if token is None or ("." not in token and "e" not in token):
        return match.group(0)
    return es_number(token)


def _numbers(value: Any) -> int:
    """_PLAIN when every number in `value` already prints as JCS wants, _FLOATS when some float must be
    rewritten (or is not finite), _OTHER for an out-of-range integer or a type beyond plain JSON."""
    stack = [value]
    pop = stack.pop
    verdict = _PLAIN
    budget = _WALK_BUDGET  # bounds the walk over a huge or cyclic value (the slow path then decides)
    while stack:
        v = pop()
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is dict:
            budget -= len(v)
            stack.extend(v.values())
        elif t is list or t is tuple:
            budget -= len(v)
            stack.extend(v)
        elif t is int:
            if not -_MAX_SAFE <= v <= _MAX_SAFE:
                return _OTHER
        elif t is float:
            r = repr(
                v
            )  # Python's repr and ECMAScript agree unless it has an exponent, ends in .0 or is nan/inf
            if "e" in r or "n" in r or r.endswith(".0"):
                verdict = _FLOATS
        else:
            return _OTHER
        if budget < 0:
            return _OTHER
    return verdict


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON bytes of `value` (RFC 8785); PayloadError when it has no exact JSON form."""
    if _numbers(value) == _PLAIN:
        try:
            out = orjson.dumps(value, option=_SORTED)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate, deep nesting, a non-string key: the paths below name the problem
        else:
            if out.isascii() or not _HIGH_LEAD.search(out):
                return out
            return _exact(value)
    return _slow(value)


def _slow(value: Any) -> bytes:
    try:
        text = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload is not representable as JSON: {exc}") from exc
    if not text.isascii() and _HIGH_CHARS.search(text):
        return _exact(value)  # key order may differ between code points and UTF-16 units
    if _MAYBE_NUMBER.search(text):
        verdict = _number_tokens(text)
        if verdict == "big":
            return _exact(value)  # the exact encoder refuses integers beyond 2**53 with a clear error
        if verdict == "floats":
            text = _TOKENS.sub(_fix_numbers, text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"payload holds a lone surrogate, which JSON cannot carry: {exc.reason}") from exc


def _exact(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError as exc:
        raise PayloadError(
            f"payload holds an integer outside the exactly representable range +-(2**53-1) (got {exc})"
        ) from exc
    except rfc8785.FloatDomainError as exc:
        raise PayloadError(f"payload holds a number JSON cannot represent exactly (got {exc})") from exc
    except (rfc8785.CanonicalizationError, UnicodeEncodeError, TypeError, ValueError) as exc:
        raise PayloadError(f"payload cannot be canonicalised: {exc}") from exc


_raw_decode = json.JSONDecoder().raw_decode


def load_payload(payload: bytes) -> Any:
    """Parse stored canonical bytes. `json.loads(bytes)` sniffs the encoding in Python on every call;
    canonical payloads are UTF-8 with nothing around the value, so this is about twice as fast."""
    return _raw_decode(payload.decode("utf-8"))[0]
