"""Specification of `ledger.canonical`: RFC 8785 canonical bytes, fast path checked against the exact one."""

from __future__ import annotations

import json
import math

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import MAX_SAFE_INT, json_floats, json_text, json_values

from ledger import PayloadError, canonical_bytes


def _json_number(text: str) -> int | float:
    """JSON integers as RFC 8785 sees them: doubles, kept as Python ints only where that is exact."""
    n = int(text)
    return n if -MAX_SAFE_INT <= n <= MAX_SAFE_INT else float(n)


#: canonicalising is cheap: these properties run many more examples than the profile's default
MANY = settings(max_examples=settings().max_examples * 25)


class TestCanonicalBytes:
    @MANY
    @given(json_values)
    @example({"\ue000": 1, "\U0001f600": 2})
    @example({"\uffff": [1.0, 2.5e-7], "\U00010000": {"b": 1e21, "a": -0.0}})
    @example([1e20, 1e21, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308])
    @example({"k": 9007199254740991, "n": -9007199254740991})
    @example("\u2028\u2029\x7f\x00\x1f")
    def test_equals_rfc8785_on_any_json_value(self, value: object) -> None:
        """For any JSON value the bytes equal those of the reference RFC 8785 implementation."""
        assert canonical_bytes(value) == rfc8785.dumps(value)

    @given(st.dictionaries(json_text, st.integers(0, 9), min_size=2, max_size=8))
    def test_keys_sorted_by_utf16_code_units(self, obj: dict[str, int]) -> None:
        """Object keys come out in the order of their UTF-16 code units, not of their code points."""
        decoded = json.loads(canonical_bytes(obj))
        assert list(decoded) == sorted(obj, key=lambda k: k.encode("utf-16-be"))

    def test_astral_key_sorts_before_private_use_key(self) -> None:
        """A key holding U+1F600 (surrogates D83D DE00) sorts before one holding U+E000, unlike code point
        order."""
        assert canonical_bytes({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()

    @MANY
    @given(json_floats)
    def test_floats_use_ecmascript_number_form(self, f: float) -> None:
        """Every float is written in its shortest ECMAScript form and reads back as the same number."""
        out = canonical_bytes(f)
        assert out == rfc8785.dumps(f)
        assert float(json.loads(out)) == f

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1.0, b"1"),
            (-0.0, b"0"),
            (1e21, b"1e+21"),
            (1e20, b"100000000000000000000"),
            (1e-7, b"1e-7"),
            (0.000001, b"0.000001"),
            (2.0**53, b"9007199254740992"),
            (0.1 + 0.2, b"0.30000000000000004"),
            (5e-324, b"5e-324"),
            ({"a": 1.5, "b": [2.0]}, b'{"a":1.5,"b":[2]}'),
        ],
    )
    def test_known_number_forms(self, value: object, expected: bytes) -> None:
        """Integral floats lose their fraction, and large or small magnitudes switch to exponent form as in
        RFC 8785."""
        assert canonical_bytes(value) == expected

    def test_plain_payload_takes_the_json_dumps_form(self) -> None:
        """A payload without floats, big integers or high characters is compact, key-sorted, unescaped
        UTF-8."""
        value = {"b": [1, True, None], "a": 'é\n"', "c": {"z": -3, "y": "x"}}
        assert canonical_bytes(value) == '{"a":"é\\n\\"","b":[1,true,null],"c":{"y":"x","z":-3}}'.encode()

    @pytest.mark.parametrize("n", [MAX_SAFE_INT, -MAX_SAFE_INT])
    def test_largest_safe_integers_are_accepted(self, n: int) -> None:
        """The integers of largest magnitude JSON represents exactly, +-(2**53-1), are written as they are."""
        assert canonical_bytes({"n": n}) == f'{{"n":{n}}}'.encode()

    @given(
        st.one_of(st.integers(min_value=2**53), st.integers(max_value=-(2**53))),
        st.sampled_from(["bare", "in_object", "in_list", "nested"]),
    )
    def test_integers_beyond_2_53_are_refused(self, n: int, where: str) -> None:
        """An integer of magnitude 2**53 or more, wherever it sits, raises PayloadError naming the range."""
        value = {"bare": n, "in_object": {"n": n}, "in_list": [1, n], "nested": {"a": [{"b": n}]}}[where]
        with pytest.raises(PayloadError, match=r"2\*\*53") as info:
            canonical_bytes(value)
        assert str(n) in str(info.value)

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_nan_and_infinities_are_refused(self, bad: float) -> None:
        """NaN and the infinities have no JSON form: PayloadError says the payload is not representable."""
        with pytest.raises(PayloadError, match="not representable as JSON"):
            canonical_bytes({"x": [1, bad]})

    @pytest.mark.parametrize(
        "value",
        [
            "\ud800",
            {"text": "ok \udfff"},
            ["a", "\udbff"],
            {"\ud83d": 1},
            {"k": "\ud83d", "f": 1.5},
        ],
    )
    def test_lone_surrogates_are_refused(self, value: object) -> None:
        """A lone surrogate (in a value or a key, on the fast or the exact path) raises PayloadError."""
        with pytest.raises(PayloadError, match=r"surrogate|canonicalised|non-UTF-8"):
            canonical_bytes(value)

    def test_non_json_types_are_refused(self) -> None:
        """A value of a type JSON does not have (bytes, a set, an object) raises PayloadError."""
        for bad in (b"raw", {1, 2}, object()):
            with pytest.raises(PayloadError, match="not representable as JSON"):
                canonical_bytes({"x": bad})

    @MANY
    @given(json_values)
    @example(2.0**53)
    @example({"cost": 1e16})
    def test_is_idempotent_through_a_parse(self, value: object) -> None:
        """Parsing canonical bytes as JSON numbers (IEEE doubles) and canonicalising again gives the same
        bytes."""
        once = canonical_bytes(value)
        assert canonical_bytes(json.loads(once, parse_int=_json_number)) == once

    def test_integral_float_beyond_2_53_reads_back_as_an_int_python_refuses(self) -> None:
        """2.0**53 is written as 9007199254740992, which Python's json parses to an int that cannot be re-
        appended.

        RFC 8785 numbers are doubles, so a reader must parse such integers as floats (as above)."""
        once = canonical_bytes({"cost": 2.0**53})
        assert once == b'{"cost":9007199254740992}'
        with pytest.raises(PayloadError):
            canonical_bytes(json.loads(once))
