"""RFC 8785 (JCS) canonical JSON, with a checked fast path.

`rfc8785.dumps` is exact but costs about 30 us for a 300-byte payload; `json.dumps` with sorted
keys and compact separators produces the same bytes for most payloads in about 7 us. The two
differ only on (a) floats (ECMAScript number formatting), (b) integers beyond 2**53 (refused by
JCS) and (c) key order when keys hold characters at or above U+E000 (JCS sorts by UTF-16 code
units). The fast path is taken only when the output proves none of those can occur; otherwise the
exact encoder runs. A property test checks both agree on arbitrary JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

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


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON bytes of `value` (RFC 8785); PayloadError when it has no exact JSON form."""
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
