"""Compliance audit of delegation chains, from the ledger alone (see docs/audit.md).

report = build_report(ledger, task_id, current=constitution)   # a JSON-ready dict
envelope = seal(report)                                          # + its SHA-256
envelope = build_sealed(ledger, task_id, current=constitution)  # both at once (faster, same bytes)
text = render(envelope, "md")                                    # text | json | md | html | csv
data = render_bytes(envelope, "json")                            # the same, as the bytes to write
issue(ledger, envelope)                                          # audit.issued + signed checkpoint
"""

from engine.audit.findings import CODES
from engine.audit.render import FORMATS, render, render_bytes
from engine.audit.report import (
    FORMAT,
    AuditInputError,
    build_report,
    build_sealed,
    issue,
    report_sha256,
    seal,
)

__all__ = [
    "CODES",
    "FORMAT",
    "FORMATS",
    "AuditInputError",
    "build_report",
    "build_sealed",
    "issue",
    "render",
    "render_bytes",
    "report_sha256",
    "seal",
]
