"""Render a sealed audit report (`{"report", "report_sha256"}`) as text, json, md, html or csv."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from engine.audit.canonical import envelope_bytes, report_bytes
from engine.printable import printable

FORMATS = ("text", "json", "md", "html", "csv")
CSV_COLUMNS = ("severity", "code", "session_id", "seq", "message", "expected", "actual", "report_sha256")


def render_json(envelope: dict[str, Any]) -> str:
    """RFC 8785 canonical JSON of the envelope; `report_sha256` is the SHA-256 of the report's own bytes."""
    return json_bytes(envelope).decode("utf-8")


def json_bytes(envelope: dict[str, Any]) -> bytes:
    """`render_json` as UTF-8 bytes, written without a text round trip (a report can be megabytes)."""
    report = getattr(envelope, "report_canonical", None) or report_bytes(envelope["report"])
    return envelope_bytes(envelope, report, b"\n")


#: a cell a spreadsheet would take for a formula (CSV injection): =, +, -, @, tab or CR first
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A cell as written to the CSV: text that a spreadsheet would run as a formula (a task id or an
    agent's text starting with "=", say) gets a leading apostrophe, so it is shown as text (OWASP's
    advice); control characters are written as visible escapes (engine.printable); numbers, and
    other text, are written as they are. The JSON report keeps the exact values."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_LEADS) and not _NUMBER.fullmatch(value):
        value = "'" + value
    return printable(value)


def render_csv(envelope: dict[str, Any]) -> str:
    """The audit's findings, one row each (violations first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in envelope["report"]["findings"]:
        row = (f["severity"], f["code"], f["session_id"], f["seq"], f["message"], f["expected"], f["actual"])
        writer.writerow([*map(csv_cell, row), envelope["report_sha256"]])
    return buf.getvalue()


def render_bytes(envelope: dict[str, Any], fmt: str, *, width: int = 160) -> bytes:
    """`render` as UTF-8 bytes, what the CLI writes (json: the canonical bytes as they are)."""
    return json_bytes(envelope) if fmt == "json" else render(envelope, fmt, width=width).encode("utf-8")


def render(envelope: dict[str, Any], fmt: str, *, width: int = 160) -> str:
    """The report in `fmt` (one of FORMATS) as text (`width`: the text form's); ValueError when unknown."""
    if fmt == "json":
        return render_json(envelope)
    if fmt == "csv":
        return render_csv(envelope)
    if fmt == "md":
        from engine.audit.render_md import render_md

        return render_md(envelope)
    if fmt == "html":
        from engine.audit.render_html import render_html

        return render_html(envelope)
    if fmt == "text":
        from engine.audit.render_text import render_text

        return render_text(envelope, width=width)
    raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
