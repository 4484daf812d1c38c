"""Text from the ledger, made safe to show: control characters become visible escapes.

Callers and agents choose much of what the ledger records (an agent's tool output, a task id, a
constraint). Shown as it is, a control character acts instead of showing: an ESC sequence moves the
cursor, erases a line, retitles the terminal or hides what follows, so an agent could rewrite what
an operator or an auditor sees of its own record; a bidirectional override (U+202E and its kin, the
"Trojan Source" characters) reorders what is displayed. `printable` writes each of them as a
visible escape (`\\x1b`, `\\u202e`); line breaks and tabs stay.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

_C0_C1 = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
#: bidirectional embeddings, overrides and isolates, and the Arabic letter mark
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x061C]

#: `str.translate` table of `printable` (other translations may extend it)
VISIBLE: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in _C0_C1 if c not in (0x09, 0x0A)},
    **{c: f"\\u{c:04x}" for c in _BIDI},
}


def printable(value: Any) -> str:
    """`str(value)` with every control character (but line breaks and tabs) and bidi control written as
    a visible escape."""
    return str(value).translate(VISIBLE)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Rich text of plain parts and (text, style) parts, each shown as it is: never read as markup,
    control characters written as visible escapes; the same whatever console prints it."""
    return Text.assemble(*((printable(p[0]), p[1]) if isinstance(p, tuple) else printable(p) for p in parts))
