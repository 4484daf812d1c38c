"""SCH-01 and SCH-02: the request's shape. The findings are made once, when the Subject is read."""

from __future__ import annotations

from gate.rules.base import Rule
from gate.subject import Subject
from schemas.events import Finding


class SchemaShape(Rule):
    id = "SCH-01"
    summary = "required fields present, non-empty and of the right type; unknown keys refused"

    def check(self, subject: Subject) -> list[Finding]:
        return [f for f in subject.findings if f.rule == self.id]


class SchemaTimestamps(Rule):
    id = "SCH-02"
    summary = "timestamps are RFC 3339 with a timezone"

    def check(self, subject: Subject) -> list[Finding]:
        return [f for f in subject.findings if f.rule == self.id]
