"""The audit's building blocks, without OpenCode: canonical bytes, times, constraints, codes, renderers."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import json_objects, json_values

from engine.audit import CODES, FORMATS, render, render_bytes, seal
from engine.audit.canonical import (
    Screen,
    envelope_bytes,
    fast_canonical,
    marked_seqs,
    number,
    screened,
    screened_bytes,
)
from engine.audit.hops import constraints_split
from engine.audit.scan import iso_us
from ledger import PayloadError, canonical_bytes
from ledger.entry import us_to_datetime

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


class TestCanonical:
    @given(json_objects)
    def test_fast_path_is_canonical_bytes(self, value: dict[str, Any]) -> None:
        """The report encoder writes exactly ledger.canonical_bytes for any JSON object."""
        expected = canonical_bytes(copy.deepcopy(value))
        assert fast_canonical(value) == expected

    @given(st.lists(json_values, max_size=6))
    def test_fast_path_on_lists(self, value: list[Any]) -> None:
        expected = canonical_bytes(copy.deepcopy(value))
        assert fast_canonical(value) == expected

    @settings(max_examples=400)
    @given(json_objects)
    @example({"x": 1e-7, "y": 1e21, "z": 0.00001})
    @example({"t": "re-run", "x": 0.5})
    def test_unmarked_canonical_payloads_reencode_to_themselves(self, value: dict[str, Any]) -> None:
        """What lets the audit skip its number walk: canonical bytes without a mark (`e-`, `e+`,
        `0.0000`) decode and re-encode unwalked to themselves, whatever floats they hold (a float of
        2**53 or more decodes as an integer the encoder refuses, walked or not)."""
        payload = canonical_bytes(value)
        if marked_seqs([(1, payload)]):
            return
        try:
            walked: bytes | None = fast_canonical(orjson.loads(payload))
        except PayloadError:
            walked = None
        if walked is None:
            with pytest.raises(PayloadError):
                screened_bytes(orjson.loads(payload), Screen(), True, [])
        else:
            assert walked == payload
            assert screened_bytes(orjson.loads(payload), Screen(), True, []) == payload

    def test_every_magnitude_unmarked_reencodes_to_itself(self) -> None:
        """The same, swept over float magnitudes 1e-30..1e30, their switch-over points included."""
        checked = 0
        for exponent in range(-30, 31):
            for mantissa in (1, 1.5, 2.25, 9.99, 3.141592653589793, 7, 123456789.123):
                for sign in (1, -1):
                    value = {"x": sign * mantissa * 10.0**exponent}
                    payload = canonical_bytes(value)
                    if not marked_seqs([(1, payload)]) and abs(value["x"]) < 2**53:
                        assert screened_bytes(orjson.loads(payload), Screen(), True, []) == payload, payload
                        checked += 1
        assert checked > 200  # the magnitudes from 1e-4 to 2**53 carry no mark

    def test_marked_payloads_are_named(self) -> None:
        """The helper names the payloads that carry a mark, wherever it falls among the others."""
        plain = b'{"a":"x","n":0.5,"t":"550e8400-e29b-41d4-a716-446655440000"}'
        rows = [
            (1, plain),
            (2, b'{"n":1e-7}'),
            (3, plain),
            (4, b'{"n":1e+21}'),
            (5, b'{"n":0.00001}'),
            (6, b'{"n":100000000000000000000}'),
            (7, b'{"t":"re-run at 0.5"}'),
            (8, plain),
        ]
        assert marked_seqs(rows) == [2, 4, 5, 6]
        assert marked_seqs([(1, plain), (2, plain)]) == []
        assert marked_seqs([]) == []

    def test_number_reports_floats_that_need_the_exact_encoder(self) -> None:
        with screened() as screen:
            assert number(5.0) == 5
            assert type(number(5.0)) is int
            assert number(0.25) == 0.25
            assert screen.risky is False
            assert number(1.5e-9) == 1.5e-9
            assert screen.risky is True
        assert number(1.5e-9) == 1.5e-9  # no screen in force: nothing to report to

    @pytest.mark.parametrize(
        ("value", "verified", "marked_values", "screen_risky"),
        [
            ({"n": 2.0}, False, [], False),  # a chain that does not verify: its bytes may be anything
            ({"n": 2.0}, True, None, False),  # no helper looked for marks
            ({"n": 1e-7}, True, [{"n": 1e-7}], False),  # a payload with a mark whose float needs it
            ({"n": 1.5e-9}, True, [], True),  # the audit's own arithmetic
        ],
    )
    def test_screened_falls_back_to_the_walk(
        self, value: dict[str, Any], verified: bool, marked_values: list[Any] | None, screen_risky: bool
    ) -> None:
        """Whenever a number may need it, the report is walked: the exact bytes."""
        screen = Screen()
        screen.risky = screen_risky
        expected = canonical_bytes(copy.deepcopy(value))
        assert screened_bytes(value, screen, verified, marked_values) == expected

    def test_screened_refuses_what_orjson_would_write_of_its_own_accord(self) -> None:
        """Unwalked, a value that is not JSON (a date) still goes to the exact encoder, which refuses it."""
        with pytest.raises(PayloadError):
            screened_bytes({"at": datetime(2030, 1, 1, tzinfo=UTC)}, Screen(), True, [])

    def test_unrepresentable_numbers_are_refused_alike(self) -> None:
        """An integer beyond 2**53 is refused by both, with the ledger's error."""
        with pytest.raises(PayloadError):
            fast_canonical({"n": 2**60})

    @given(json_objects, json_objects)
    def test_envelope_bytes(self, report: dict[str, Any], issued: dict[str, Any]) -> None:
        """The envelope's bytes, assembled around the report's, are canonical_bytes of the envelope."""
        envelope = {"report": report, "report_sha256": "ab" * 32, "issued": issued}
        expected = canonical_bytes(copy.deepcopy(envelope))
        assert envelope_bytes(envelope, canonical_bytes(report)) == expected
        assert envelope_bytes(envelope, canonical_bytes(report), b"\n") == expected + b"\n"


@given(st.integers(0, 4_102_444_800_000_000))
def test_iso_us_is_the_ledgers_format(us: int) -> None:
    """Times read as the ledger writes them: UTC, Z, microseconds only when not zero (exact, no float)."""
    expected = (
        (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    )
    assert iso_us(us) == expected


@given(st.integers(-(2**62), 2**62) | st.integers(0, 2**33 * 1_000_000 + 10**12))
@example(2**33 * 1_000_000 - 1)
@example(2**33 * 1_000_000 - 999_999)
@example(2**33 * 1_000_000 + 1)
@example(-1)
def test_iso_us_writes_what_the_datetime_path_writes(us: int) -> None:
    """`iso_us` (the ledger's and the audit's fold) writes each time as the datetime path does, in or out of
    the range it formats from integers (out of it, the datetime's text or its error)."""
    try:
        expected: str | type[Exception] = us_to_datetime(us).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError) as exc:
        expected = type(exc)
    if isinstance(expected, str):
        assert iso_us(us) == expected
    else:
        with pytest.raises(expected):
            iso_us(us)


def test_iso_us_examples() -> None:
    assert iso_us(0) == "1970-01-01T00:00:00Z"
    assert iso_us(1_767_225_600_000_001) == "2026-01-01T00:00:00.000001Z"
    assert iso_us(int(datetime(2026, 11, 21, 8, 5, 7, 250000, tzinfo=UTC).timestamp() * 1e6)) == (
        "2026-11-21T08:05:07.250000Z"
    )


class TestConstraints:
    def test_normalised_like_the_gate(self) -> None:
        """Whitespace, case and NFKC aside, a constraint restated is inherited, not added."""
        split = constraints_split(["  use SERENA   tools only", "Write tests"], [["Use Serena tools only"]])
        assert split == {"inherited": ["  use SERENA   tools only"], "added": ["Write tests"], "missing": []}

    def test_dropped_constraint_is_missing(self) -> None:
        """A constraint of any ancestor that the hop dropped is listed as missing (what CON-01 refuses)."""
        split = constraints_split(["B"], [["A"], ["A", "B"]])
        assert split == {"inherited": ["B"], "added": [], "missing": ["A"]}


def test_every_finding_code_is_documented() -> None:
    """docs/audit.md lists every finding code with its severity."""
    text = DOCS.read_text(encoding="utf-8")
    for code, (severity, _meaning) in CODES.items():
        assert re.search(rf"\|\s*`{code}`\s*\|\s*{severity}\s*\|", text), code


def _minimal_report() -> dict[str, Any]:
    hop = {
        "session_id": "s-1",
        "role": "tester",
        "principal": "tester",
        "delegator": "pm",
        "parent_session_id": None,
        "depth": 0,
        "task_id": "t",
        "in_window": True,
        "decision": "approved",
        "status": "running",
        "terminal": False,
        "end_reason": None,
        "instructions": None,
        "capabilities": {
            "delegator_cap": "x",
            "delegated_cap": "y <b>",
            "scopes": None,
            "phantom_level": "p",
        },
        "constraints": {"inherited": [], "added": ["c | d"], "missing": []},
        "times": dict.fromkeys(
            (
                "requested_at",
                "delegated_at",
                "evaluated_at",
                "spawned_at",
                "ended_at",
                "expires_at",
                "timeout_seconds",
            )
        ),
        "budget": {
            "requested": {"max_tokens": None, "max_cost_usd": None},
            "allocated": {"max_tokens": None, "max_cost_usd": None},
            "consumed": {"tokens": 0, "cost_usd": 0},
            "subtree": {"tokens": 0, "cost_usd": 0},
            "exceeded": [],
        },
        "verdict": None,
        "evidence": dict.fromkeys(("requested", "decided", "spawned", "terminal", "revoked")),
        "revocation": None,
        "outputs": 0,
        "summary": None,
        "actions": [],
        "pruned": True,
        "unavailable": ["gate.decided"],
        "children": [],
        "rerun": None,
    }
    return {
        "format": "f",
        "generated_at": "2026-01-01T00:00:00Z",
        "scope": {"task_id": "t", "session_id": None, "since": None, "until": None},
        "ledger": {
            "ledger_id": "l",
            "origin": "o",
            "head": {"size": 0, "hash": ""},
            "verify": {"ok": True, "entries": 0, "checkpoints_checked": 0},
            "newest_checkpoint": None,
            "checkpoints": 0,
        },
        "rulesets": {
            "current": {"ruleset_hash": "sha256:x", "profile": "default", "source": None},
            "loaded": [],
            "in_verdicts": [],
        },
        "task": {"task_id": "t", "original_task": None, "cap_origin": None},
        "tree": [hop],
        "refused": [],
        "retention": {
            "minimum_days": 180,
            "oldest_entry": None,
            "pruned_payloads": 0,
            "prunes": [],
            "ok": True,
        },
        "prior_audits": [],
        "findings": [],
        "summary": {
            "hops": 1,
            "approved": 1,
            "refused": 0,
            "revoked": 0,
            "tool_calls": 0,
            "tokens": 0,
            "cost_usd": 0,
            "violations": 0,
            "warnings": 0,
            "infos": 0,
            "result": "pass",
        },
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_renderers_cope_with_missing_parts(fmt: str) -> None:
    """A hop whose payloads are gone (no verdict, no evidence, no task) still renders in every format."""
    text = render(seal(_minimal_report()), fmt)
    assert text
    if fmt == "html":
        assert "y &lt;b&gt;" in text
        assert "y <b>" not in text
    if fmt == "md":
        assert "c \\| d" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_bytes_are_the_text_in_utf8(fmt: str) -> None:
    """What the CLI writes (bytes) is the rendered text, encoded: json without a text round trip."""
    envelope = seal(_minimal_report())
    assert render_bytes(envelope, fmt) == render(envelope, fmt).encode("utf-8")
    if fmt == "json":
        assert render_bytes(envelope, fmt) == canonical_bytes(dict(envelope)) + b"\n"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        render(seal(_minimal_report()), "pdf")


#: text a caller or an agent may put on the ledger that Markdown, Mermaid or a spreadsheet would read
#: as syntax: emphasis, a link, raw HTML, a code span, a table cell's end, strikethrough, an entity
HOSTILE = (
    "repo:src/**#fs/write",
    "src/__init__.py",
    "<img src=x onerror=alert(1)>",
    "[click](https://evil.example)",
    "a `tick` | pipe ~~gone~~ &amp; *star*",
)


def _hostile_report() -> dict[str, Any]:
    report = _minimal_report()
    hop = report["tree"][0]
    hop["role"] = HOSTILE[3]
    hop["capabilities"].update(delegated_cap=HOSTILE[2], scopes=[HOSTILE[0]])
    hop["constraints"]["added"] = [HOSTILE[4]]
    hop["end_reason"] = HOSTILE[1]
    hop["actions"] = [
        {
            "seq": 7,
            "kind": "tool",
            "name": "write",
            "status": "completed",
            "detail": HOSTILE[2] + " " + HOSTILE[1],
            "coverage": {"by": HOSTILE[0], "covered": True, "rule": "allow"},
        }
    ]
    report["task"]["cap_origin"] = {"ultimate_authority": 'Eve"] --> x["#quot;'}
    report["findings"] = [
        {
            "severity": "violation",
            "code": "BUDGET_OVERRUN",
            "session_id": "s-1",
            "seq": 7,
            "message": HOSTILE[4],
            "expected": '=HYPERLINK("https://evil.example")',
            "actual": "-5",
        }
    ]
    return report


def test_markdown_shows_recorded_text_exactly_and_makes_nothing_of_it() -> None:
    """Rendered by a CommonMark parser with GitHub's tables, every text from the ledger reads as it was
    recorded: no emphasis out of `**` or `__init__`, no link, no image, no HTML tag, no code span, and
    no table cell cut at a `|` (the report is read by auditors in Markdown viewers)."""
    from markdown_it import MarkdownIt

    md = render(seal(_hostile_report()), "md")
    html = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(md)
    for text in HOSTILE:
        shown = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        assert shown in html, text
    assert not re.search(r"<(img|a|strong|em|s|del)\b", html)
    assert "<code>" not in html.split("<h3>", 1)[1].split("</h3>", 1)[1]  # only the heading's session id
    mermaid = re.search(r"```mermaid\n(.*?)```", md, re.S)
    assert mermaid is not None
    assert 'main(["Eve#quot;] --#gt; x[#quot;#35;quot; / main agent"])' in mermaid.group(1)


def test_csv_cells_are_never_formulas() -> None:
    """A finding's text that a spreadsheet would run as a formula is written with a leading apostrophe;
    a negative number stays a number; the other cells are as they are."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(render(seal(_hostile_report()), "csv"))))
    assert rows[0]["expected"] == '\'=HYPERLINK("https://evil.example")'
    assert rows[0]["actual"] == "-5"
    assert rows[0]["message"] == HOSTILE[4]
    assert rows[0]["code"] == "BUDGET_OVERRUN"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "json"])
def test_control_characters_never_reach_a_reader_raw(fmt: str) -> None:
    """An ESC sequence (which would move the cursor over, or erase, what a terminal shows) or a bidi
    override (which reorders it) recorded by an agent is shown as a visible escape in every format
    meant to be read (`cat report.md` included); the JSON report keeps the exact value."""
    report = _hostile_report()
    hop = report["tree"][0]
    hop["end_reason"] = "done\x1b[1A\x1b[2K \u202egnp.exe"
    hop["actions"][0]["detail"] = "rm -rf /\r\x1b[2Kls"
    report["findings"][0]["message"] = "ok\x1b]0;title\x07"
    text = render(seal(report), fmt)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]", text)
    assert "\\x1b]0;title\\x07" in text.replace("\\]", "]")  # md escapes the bracket
    if fmt != "csv":  # the findings are all the CSV holds
        assert "\\u202egnp.exe" in text
        assert "\\x1b[2K" in text.replace("\\[", "[")
