"""The report in every format, from the CLI: text, json, md (Mermaid), html (drawn in Chromium), csv."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from audit_support import TASK, Chain, Cli

from ledger import canonical_bytes

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def rendered(cli: Cli, chain_keys: Chain, tmp_path: Path) -> dict[str, tuple[int, str]]:
    """(exit code, file text) of `ledger audit TASK --format F --out FILE` for every format."""
    out = {}
    for fmt in ("text", "json", "md", "html", "csv"):
        path = tmp_path / f"report.{fmt}"
        code, _, err = cli(
            TASK, "--constitution", str(chain_keys.constitution), "--format", fmt, "--out", str(path)
        )
        assert f"wrote {path}" in err.replace("\n", "")
        out[fmt] = (code, path.read_text(encoding="utf-8"))
    return out


def test_every_format_fails_on_the_budget_overrun(rendered: dict[str, tuple[int, str]]) -> None:
    """Whatever the format, the audit exits 1: the chain holds a budget overrun."""
    assert {fmt: code for fmt, (code, _) in rendered.items()} == dict.fromkeys(rendered, 1)


def test_text(rendered: dict[str, tuple[int, str]], chain: Chain) -> None:
    """The terminal tree names every hop, its state, the refusals' rules and the findings."""
    text = rendered["text"][1]
    assert f"Compliance audit of task {TASK}" in text
    assert "FAIL" in text
    assert "delegation tree (authority: Auctor)" in text
    for sid in chain.ids.values():
        if sid != chain.ids["clean"]:
            assert sid[:8] in text
    assert "REFUSED" in text
    assert "CYC-01" in text
    assert "ID-01, ID-03" in text
    assert "approved · revoked" in text
    assert "EXCEEDED tokens 5050 > 100" in text
    assert "BUDGET_OVERRUN" in text
    assert "re-run: reproduced" in text
    assert "├── " in text
    assert "│   └── tester ← backend_specialist" in text


def test_text_wraps_and_never_crops(rendered: dict[str, tuple[int, str]]) -> None:
    """A tree branch longer than the page is wrapped, not cut: every word of the JSON report's
    evidence labels (each hop's seqs and hashes) is in the text at a narrow width."""
    from engine.audit import labels
    from engine.audit.render_text import render_text

    env = json.loads(rendered["json"][1])
    narrow = render_text(env, width=100)
    words = set(narrow.replace(",", " ").split())
    assert max(len(line) for line in narrow.splitlines()) <= 100
    for hop in env["report"]["tree"]:
        for word in labels.evidence(hop).replace(",", " ").split():
            assert word in words


def test_json_is_canonical_with_its_hash(rendered: dict[str, tuple[int, str]]) -> None:
    """--format json prints RFC 8785 canonical JSON; report_sha256 is the hash of the report's bytes."""
    text = rendered["json"][1]
    envelope = json.loads(text)
    assert text.encode() == canonical_bytes(envelope) + b"\n"
    assert envelope["report_sha256"] == hashlib.sha256(canonical_bytes(envelope["report"])).hexdigest()
    assert set(envelope["report"]) == {
        "format",
        "generated_at",
        "scope",
        "ledger",
        "rulesets",
        "task",
        "tree",
        "refused",
        "retention",
        "prior_audits",
        "findings",
        "summary",
    }


def test_markdown_with_mermaid(rendered: dict[str, tuple[int, str]], chain: Chain) -> None:
    """The Markdown report draws the tree in Mermaid: one node per hop, refusals as dotted edges."""
    md = rendered["md"][1]
    block = re.search(r"```mermaid\n(.*?)```", md, re.S)
    assert block is not None
    graph = block.group(1)
    assert graph.startswith("graph TD")
    nodes = re.findall(r'^\s+(h\d+)\["', graph, re.M)
    assert len(nodes) == 7
    assert graph.count("-.->|refused|") == 2
    assert "classDef refused" in graph
    assert "classDef revoked" in graph
    assert "classDef overrun" in graph
    assert f'["tester<br/>{chain.ids["child"][:8]}<br/>approved · completed"]' in graph
    assert "#lt;" not in graph  # only text from the ledger is escaped, not the line breaks
    assert "## Refused delegations" in md
    assert "## Findings" in md
    assert "| violation | BUDGET\\_OVERRUN |" in md  # escaped: an underscore may be emphasis
    assert f"`{chain.ids['child']}`" in md
    assert "constraints added" in md


def test_csv_findings(rendered: dict[str, tuple[int, str]], chain: Chain) -> None:
    """--format csv holds the findings, one row each, violations first."""
    rows = list(csv.DictReader(io.StringIO(rendered["csv"][1])))
    assert next(r["code"] for r in rows) == "BUDGET_OVERRUN"
    assert {r["code"] for r in rows} == {"BUDGET_OVERRUN", "DELEGATION_REFUSED", "DELEGATION_REVOKED"}
    assert {r["session_id"] for r in rows if r["code"] == "DELEGATION_REFUSED"} == {
        chain.ids["back"],
        chain.ids["bad"],
    }
    assert len({r["report_sha256"] for r in rows}) == 1


def test_html_is_one_self_contained_file(rendered: dict[str, tuple[int, str]], chain: Chain) -> None:
    """The HTML report loads nothing from elsewhere and holds one box per hop, nested as the tree is."""
    html = rendered["html"][1]
    assert html.startswith("<!doctype html>")
    assert "<style>" in html
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<script|<link""", html, re.I)
    assert html.count("<div class='node ") == 7 + 1  # every hop and the authority at the top
    assert f"id='s-{chain.ids['back']}'" in html
    assert "node refused" in html
    assert "node revoked" in html
    nested = html.index(f"id='s-{chain.ids['root']}'") < html.index(f"id='s-{chain.ids['child']}'")
    assert nested
    assert "FAIL" in html


def _png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of a sample of an 8-bit RGB(A) PNG (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = color = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            assert color in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    colours, prev = set(), bytearray(stride)
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 7 == 0:
            colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp * 5))
        prev = line
    return width, height, colours


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian chromium is not installed (/usr/bin/chromium): "
    "apt-get install -y chromium to draw the HTML report",
)
def test_html_drawn_in_headless_chromium(rendered: dict[str, tuple[int, str]], tmp_path: Path) -> None:
    """Chromium renders the HTML report to a 1400x1000 screenshot that is far from blank."""
    page = tmp_path / "report.html"
    page.write_text(rendered["html"][1], encoding="utf-8")
    shot = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1400,1000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert len(data) > 30_000
    width, height, colours = _png_pixels(data)
    assert (width, height) == (1400, 1000)
    assert len(colours) > 50  # text, boxes of several colours, lines: not a blank or single-colour page
    keep = Path(__file__).parent / "artifacts"
    if keep.is_dir():  # for a person to look at: mkdir tests/audit/artifacts before running
        shutil.copy(shot, keep / "report.png")
