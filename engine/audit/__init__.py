"""Compliance audit of delegation chains, from the ledger alone (see docs/audit.md).

report = build_report(ledger, task_id, current=constitution)   # a JSON-ready dict
envelope = seal(report)                                          # + its SHA-256
text = render(envelope, "md")                                    # text | json | md | html | csv
issue(ledger, envelope)                                          # audit.issued + signed checkpoint
"""

from engine.audit.findings import CODES
from engine.audit.render import FORMATS, render
from engine.audit.report import FORMAT, AuditInputError, build_report, issue, report_sha256, seal

__all__ = [
    "CODES",
    "FORMAT",
    "FORMATS",
    "AuditInputError",
    "build_report",
    "issue",
    "render",
    "report_sha256",
    "seal",
]
