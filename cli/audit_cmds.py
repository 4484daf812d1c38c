"""`ledger audit TASK_ID`: the compliance audit of a task's delegation chains, from the ledger alone.

Exit codes: 0 no violation, 1 the audit found a violation, 2 bad input (an unknown task id lists
the task ids the ledger holds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import STATE, parse_duration, parse_when, want_json, writable, write_failed
from cli.render import err, fail, out


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


def _current_rules(path: Path | None) -> tuple[object, str]:
    """The rules to re-run decisions under now: --constitution, else the engine's own loading."""
    from engine.settings import EngineSettings, load_constitution_file
    from gate import ConstitutionError, load_constitution

    try:
        if path is not None:
            return load_constitution(path.read_text(encoding="utf-8"), source=str(path)), str(path)
        source = (
            os.environ.get("LEDGER_CONSTITUTION") or "engine settings (user config file or built-in default)"
        )
        return load_constitution_file(EngineSettings(db_path=STATE.db_path)), source
    except ConstitutionError as exc:
        fail(f"constitution refused: {exc.diagnostics()}")
    except OSError as exc:
        fail(f"--constitution: cannot read {path}: {exc.strerror}")
    raise AssertionError("unreachable")


def audit(
    task_id: Annotated[
        str | None, typer.Argument(help="The task to audit (original_task.task_id); optional with --session.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only delegations requested at or after this date/time (ancestors stay as context).",
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only delegations requested before this.")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Audit only the subtree of this session.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="text (default), json, md, html or csv (the findings).")
    ] = "text",
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the report to this file.")
    ] = None,
    sign: Annotated[
        bool,
        typer.Option(
            "--sign", help="Record the report's hash (audit.issued) and sign a checkpoint naming it."
        ),
    ] = False,
    retention_min: Annotated[
        str, typer.Option("--retention-min", help="Minimum retention of payloads.")
    ] = "180d",
    stale_after: Annotated[
        str,
        typer.Option("--stale-after", help="A non-terminal session with no entry for this long is stale."),
    ] = "1h",
    constitution: Annotated[
        Path | None,
        typer.Option(
            "--constitution", help="Current rules to re-run every decision under (default: the engine's)."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Compliance report of one task's delegation chain; exit 1 on a violation.

    Who asked for what, under whose authority, and who delegated what to whom.

    What each agent did and spent, what was refused and why, and whether the record is intact."""
    from engine.audit import FORMATS, AuditInputError, build_sealed, issue, render_bytes

    fmt = "json" if want_json(json_out) else fmt
    if fmt not in FORMATS:
        fail(f"--format: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    window = {
        "since": parse_when(since, "--since") if since else None,
        "until": parse_when(until, "--until") if until else None,
    }
    if window["since"] and window["until"] and window["since"] >= window["until"]:
        fail(f"--since ({since}) must be before --until ({until})")
    current, source = _current_rules(constitution)
    if out_file is not None:
        writable(out_file, "--out")  # before the audit is built and, with --sign, recorded
    with STATE.open() as led:
        if sign and led.signer is None:
            fail(f"--sign needs the ledger's signing key (none at {led.key_path}; run `ledger init`)")
        try:
            envelope = build_sealed(
                led,
                task_id,
                session_id=session,
                current=current,  # type: ignore[arg-type]
                current_source=source,
                retention_min=parse_duration(retention_min, "--retention-min"),
                stale_after=parse_duration(stale_after, "--stale-after"),
                **window,
            )
        except AuditInputError as exc:
            fail(str(exc))
        report = envelope["report"]
        if sign:
            envelope["issued"] = issue(led, envelope, by=os.environ.get("USER") or None)
    summary = report["summary"]
    if out_file is not None:
        try:
            out_file.write_bytes(render_bytes(envelope, fmt))
        except OSError as exc:
            write_failed(out_file, "--out", exc)
        err.print(
            f"wrote {out_file} ({fmt}); report sha256 {envelope['report_sha256']}; "
            f"{summary['result'].upper()}: {summary['violations']} violation(s), "
            f"{summary['warnings']} warning(s)"
        )
    elif fmt == "text":
        from engine.audit.render_text import renderables

        out.print(renderables(envelope))
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(render_bytes(envelope, fmt))
        sys.stdout.buffer.flush()
    if sign and fmt != "json":
        issued = envelope["issued"]
        err.print(
            f"issued: audit.issued at seq {issued['seq']}; checkpoint size {issued['checkpoint']['size']} "
            f"signed with audit_report_sha256 {issued['report_sha256']}"
        )
    raise typer.Exit(1 if summary["violations"] else 0)
