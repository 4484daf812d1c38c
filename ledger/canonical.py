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
# A number token with a fraction/exponent, or an integer of 16+ digits, right after : [ or ,
# (compact separators put no space there). Inside a string this can match too: the only cost of
# such a false positive is taking the exact path.
_NEEDS_EXACT = re.compile(r"[:\[,]-?\d+[.eE]|[:\[,]-?\d{16,}|^-?\d+[.eE]|^-?\d{16,}")
_HIGH_CHARS = re.compile("[\ue000-\U0010ffff]")


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON bytes of `value` (RFC 8785); PayloadError when it has no exact JSON form."""
    try:
        text = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload is not representable as JSON: {exc}") from exc
    if _NEEDS_EXACT.search(text) or (not text.isascii() and _HIGH_CHARS.search(text)):
        return _exact(value)
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
