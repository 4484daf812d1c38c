"""Ledger maintenance: init, checkpoint, verify, prune, replay."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.options import STATE, parse_duration, parse_when, want_json, writable
from cli.render import emit_json, err, fail, out, progress, styled, table
from ledger import Ledger, LedgerError
from ledger.checkpoint import load_verifier
from ledger.witness import read_witness

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("checkpoint")(checkpoint)
    app.command("verify")(verify)
    app.command("prune")(prune)
    app.command("replay")(replay)


def init(
    key: Annotated[
        Path | None, typer.Option("--key", help="Where to write the private key (default: user config).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the ledger database and its Ed25519 signing key (mode 0600, outside the database)."""
    path = STATE.db_path
    existed = path.exists()
    try:
        led = Ledger.init(path, key_path=key)
    except LedgerError as exc:
        fail(exc.diagnostics())
    with led:
        info = {
            "db": str(path),
            "created": not existed,
            "ledger_id": led.ledger_id,
            "origin": led.origin,
            "key": str(led.key_path),
            "public_key": str(led.key_path.with_suffix(".pub")),
            "verifier_key": led.signer.verifier.text() if led.signer else None,
        }
    if want_json(json_out):
        emit_json(info)
        return
    out.print(f"{'created' if not existed else 'opened existing'} ledger {path}")
    out.print(f"  origin      {info['origin']}")
    out.print(f"  signing key {info['key']} (0600)")
    out.print(f"  public key  {info['public_key']}")


def checkpoint(json_out: JsonOpt = False) -> None:
    """Sign the current head (origin, size, Merkle root, head hash) and record it."""
    with STATE.open() as led:
        cp = led.checkpoint()
    if want_json(json_out):
        emit_json({"size": cp.size, "root": cp.root.hex(), "head": cp.head.hex(), "note": cp.note})
    else:
        out.print(cp.note, end="")


def verify(
    archive: Annotated[
        list[Path] | None,
        typer.Option(
            "--archive", help="Also re-check a prune archive against the retained hashes (repeatable)."
        ),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Public key file (.pub) to check checkpoints with.")
    ] = None,
    checkpoint_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint note kept "
            "elsewhere (published, witnessed) to check the "
            "ledger against too (repeatable).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every link, payload hash and signed checkpoint; exit 1 on any tampering."""
    as_json = want_json(json_out)
    with STATE.open() as led:
        try:
            verifier = load_verifier(key) if key else None
            extra = []
            for path in checkpoint_file or []:
                cp = read_witness(path)
                if cp is None:
                    fail(f"--checkpoint: no file {path}")
                extra.append(cp)
        except LedgerError as exc:
            fail(exc.diagnostics())
        size = led.head().size
        with progress("verifying", size, not as_json) as update:
            report = led.verify(verifier=verifier, progress=update, extra_checkpoints=extra)
        archives = [led.verify_archive(a) for a in archive or []]
    ok = report.ok and all(a.ok for a in archives)
    if as_json:
        emit_json({**report.to_json(), "ok": ok, "archives": [a.to_json() for a in archives]})
    else:
        if report.ok:
            out.print(
                styled(
                    ("ok", "green"),
                    f": {report.entries} entries verified ({report.pruned} pruned payloads), "
                    f"{report.checkpoints_checked} checkpoint(s) checked; head {report.head}",
                )
            )
        else:
            b = report.broken
            assert b is not None
            out.print(styled(("TAMPERED", "bold red"), f" at seq {b.seq}: {b.problem}: {b.message}"))
            if b.expected or b.actual:
                out.print(f"  expected {b.expected}\n  actual   {b.actual}")
        for w in report.warnings:
            err.print(styled(("warning:", "yellow"), f" {w}"))
        for a in archives:
            if a.ok:
                out.print(
                    styled(
                        ("ok", "green"),
                        f": archive {a.archive}: {a.checked} payloads match the retained hashes",
                    )
                )
            else:
                out.print(
                    styled(
                        ("ARCHIVE MISMATCH", "bold red"),
                        f" {a.archive}: {len(a.problems)} problem(s); first: {a.problems[0]['message']}",
                    )
                )
    raise typer.Exit(0 if ok else 1)


def prune(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Prune sessions that ended longer ago than this (30d, 12h, 6w)."),
    ] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Prune sessions that ended before this date.")
    ] = None,
    archive: Annotated[
        Path | None, typer.Option("--archive", help="Archive file (.jsonl.gz); default: beside the database.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be pruned; change nothing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Archive then remove payloads of terminal sessions older than a cutoff; hashes stay verifiable."""
    if (older_than is None) == (before is None):
        fail("give exactly one of --older-than DURATION or --before DATE")
    now = datetime.now(UTC)
    cutoff = (
        now - parse_duration(older_than, "--older-than")
        if older_than
        else parse_when(before or "", "--before")
    )
    if archive is not None and not dry_run:
        writable(archive, "--archive")
    with STATE.open() as led:
        try:
            report = led.prune(cutoff, archive=archive, dry_run=dry_run, now=now)
        except LedgerError as exc:
            fail(exc.diagnostics())
    if want_json(json_out):
        emit_json(report.to_json())
        return
    verb = "would prune" if dry_run else "pruned"
    out.print(
        f"{verb} {report.entries} payload(s) ({report.payload_bytes} bytes) of {report.streams} stream(s) "
        f"({len(report.sessions)} session(s)) that ended before {report.cutoff}; "
        f"{report.skipped_active} active session(s) left alone"
    )
    if not dry_run and report.archive:
        out.print(f"archive {report.archive} sha256 {report.archive_sha256}")
        out.print(f"database {report.db_bytes_before} -> {report.db_bytes_after} bytes")


def replay(
    check: Annotated[
        bool,
        typer.Option("--check", help="Compare the rebuild with the stored projections; exit 1 on drift."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild sessions, the delegation tree, budgets and revocations from the events."""
    as_json = want_json(json_out)
    with STATE.open() as led, progress("replaying", led.head().size, not as_json) as update:
        report = led.replay(check=check, progress=update)
    if as_json:
        emit_json(report.to_json())
    elif check and not report.ok:
        out.print(
            styled(
                ("DRIFT", "bold red"),
                f": {len(report.drift)} difference(s) between the events and the projections",
            )
        )
        table(
            None,
            ["session", "field", "projection", "rebuilt"],
            [(d["session_id"], d["field"], d.get("actual"), d.get("expected")) for d in report.drift[:50]],
        )
    else:
        what = "checked" if check else "rebuilt"
        out.print(
            styled(
                ("ok", "green"),
                f": {what} {report.sessions} session(s) from {report.folded} projected event(s) of {report.events}",
            )
        )
    raise typer.Exit(0 if report.ok else 1)
