"""What a rule is: an id, a one-line summary, the parts of the request it needs, and one `check`."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from gate.subject import Subject
from schemas.base import format_rfc3339
from schemas.events import Finding

__all__ = ["Rule", "ts"]


class Rule:
    """One gate rule. `check` returns its findings (violations and warnings) for one subject.

    A rule runs only when every part named in `needs` was read intact (see `Subject.valid`): a rule
    never judges a field that already failed SCH-01 or SCH-02.
    """

    id: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def check(self, subject: Subject) -> list[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}: {self.summary}>"


def ts(value: datetime) -> str:
    """A timestamp as messages show it (RFC 3339, UTC)."""
    return format_rfc3339(value)
