"""The audit's building blocks, without OpenCode: canonical bytes, times, constraints, codes, renderers."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import json_objects, json_values

from engine.audit import CODES, FORMATS, render, render_bytes, seal
from engine.audit.canonical import Prechecked, envelope_bytes, fast_canonical
from engine.audit.hops import constraints_split
from engine.audit.scan import iso_us
from ledger import PayloadError, canonical_bytes
from ledger.entry import us_to_datetime

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_decision_heads_are_found_near_and_far() -> None:
    """The entry a decision's recorded head names: just before it, far before it (the index), at seq 1,
    or nowhere (None)."""
    from engine.audit.scan import Ev, _Heads

    events = [Ev(i, "s", "t", 0, i.to_bytes(32, "big"), None) for i in range(1, 101)]
    heads = _Heads(events)
    assert heads.seq((99).to_bytes(32, "big"), 100) == 99  # the entry just before
    assert heads.seq((90).to_bytes(32, "big"), 100) == 90  # a few back
    assert heads.seq((3).to_bytes(32, "big"), 100) == 3  # far back: the index
    assert heads.seq((1).to_bytes(32, "big"), 2) == 1  # the first entry
    assert heads.seq((1).to_bytes(32, "big"), 5) == 1
    assert heads.seq((500).to_bytes(32, "big"), 100) is None
    assert heads.seq((100).to_bytes(32, "big"), 100) == 100  # the decision's own hash: the caller refuses it


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

    @given(st.lists(st.tuples(json_objects, json_values, json_values), max_size=5))
    @example([({"n": 1.5}, 2.0, {"x": 1e-7})])  # an integral float and an exponent, added after the walk
    @example([({"n": 2.0}, None, [])])  # an integral float in a part walked ahead
    @example([({"n": 1e21}, None, [])])  # a number only the exact encoder writes, walked ahead
    def test_prechecked_parts_change_nothing(self, parts: list[tuple[dict[str, Any], Any, Any]]) -> None:
        """Walking parts of a value ahead (the audit's hops, while its helper finishes), then filling in
        the members left out, encodes to the same bytes as one walk of the whole."""
        hops = [{**own, "rerun": None, "children": []} for own, _, _ in parts]
        prechecked = Prechecked()
        for hop in hops:
            prechecked.walk(hop, ("children", "rerun"))
        for hop, (_, rerun, child) in zip(hops, parts, strict=True):
            hop["rerun"], hop["children"] = rerun, [child]
        value = {"tree": hops, "n": 0.5}
        expected = canonical_bytes(copy.deepcopy(value))
        assert fast_canonical(value, prechecked) == expected

    def test_unrepresentable_numbers_are_refused_alike(self) -> None:
        """An integer past 2**53 that no double holds is refused by both, with the ledger's error."""
        with pytest.raises(PayloadError):
            fast_canonical({"n": 2**53 + 1})
        with pytest.raises(PayloadError):
            canonical_bytes({"n": 2**53 + 1})
        with pytest.raises(PayloadError):  # in a tuple (not rewritable in place): refused, not a crash
            fast_canonical({"t": (2**60,)})

    @pytest.mark.parametrize("number", [2**53, 10**17, 10**18, 2**60, 10**19, -(10**20)])
    def test_a_recorded_large_float_is_written_as_recorded(self, number: int) -> None:
        """JCS writes a float from 1e16 on as bare digits, which decode as an integer past 2**53: the
        report writes it back as the double it was, with the same digits, where canonical_bytes
        refuses the integer."""
        recorded = canonical_bytes({"n": float(number)})
        decoded = orjson.loads(recorded)
        assert type(decoded["n"]) in (int, float)
        assert fast_canonical(decoded) == recorded

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
