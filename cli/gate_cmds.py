"""`ledger gate check FILE.json` (dry run, nothing recorded) and `ledger gate rules`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

import gate
from cli.options import STATE, AllowRootOpt, ConstitutionOpt, want_json
from cli.render import emit_json, fail, out, styled, table
from engine.chain_context import build_context
from engine.roles import load_catalogue
from engine.settings import EngineSettings, load_constitution_file
from ledger import Ledger, LedgerError

gate_app = typer.Typer(help="Dry-run delegation requests against the ConstitutionGate.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    app.add_typer(gate_app, name="gate")


def constitution_for(
    path: Path | None, profile: str | None, allow_roots: list[Path] | None
) -> gate.Constitution:
    settings = EngineSettings(constitution_path=path, allowed_roots=tuple(str(p) for p in allow_roots or ()))
    try:
        constitution = load_constitution_file(settings)
    except (gate.ConstitutionError, OSError) as exc:
        fail(f"constitution refused: {exc}")
    if profile is not None:
        if profile not in ("default", "strict"):
            fail(f"--profile: expected default or strict (got {profile!r})")
        constitution = constitution.model_copy(update={"profile": profile})
    return constitution


@gate_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="JSON file with spawn_agent arguments.")],
    profile: Annotated[
        str | None, typer.Option("--profile", help="default | strict (overrides the file).")
    ] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Judge as a child of this session.")] = None,
    constitution: ConstitutionOpt = None,
    allow_root: AllowRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Judge a request against the current ledger and constitution, recording nothing: exit 0 approved, 1 refused."""
    try:
        raw: Any = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{file}: not a readable JSON file ({exc})")
    if not isinstance(raw, dict):
        fail(f"{file}: expected a JSON object of spawn_agent arguments (got {type(raw).__name__})")
    rules = constitution_for(constitution, profile, allow_root)
    db = STATE.db_path
    project = raw.get("project_directory") if isinstance(raw.get("project_directory"), str) else None
    known = frozenset(load_catalogue(project))
    if db.exists():
        try:
            with Ledger.open(db, create=False) as led:
                if parent is not None and led.session(parent) is None:
                    fail(f"--parent: no session {parent!r} on the ledger {db}")
                ctx = build_context(led, raw, parent, known)
        except LedgerError as exc:
            fail(exc.diagnostics())
    else:
        if parent is not None:
            fail(f"--parent needs a ledger, and there is none at {db}")
        ctx = build_context_without_ledger(raw, known)
    verdict = gate.evaluate(raw, ctx, datetime.now(UTC), rules)
    if want_json(json_out):
        emit_json(verdict.model_dump(mode="json"))
    else:
        colour = "green" if verdict.decision == "approved" else "bold red"
        out.print(
            styled(
                (verdict.decision.upper(), colour),
                f" (profile {verdict.profile}, ruleset {verdict.ruleset_hash[:23]}…)",
            )
        )
        for f in [*verdict.violations, *verdict.warnings]:
            tag = ("error  ", "red") if f.severity == "error" else ("warning", "yellow")
            out.print(styled(tag, f" {f.rule} hop {f.hop} {f.path or '(request)'}: {f.message}"))
    raise typer.Exit(0 if verdict.decision == "approved" else 1)


def build_context_without_ledger(raw: dict[str, Any], known: frozenset[str]) -> gate.ChainContext:
    from engine.chain_context import directory_facts

    return gate.ChainContext(directory=directory_facts(raw.get("project_directory")), known_roles=known)


@gate_app.command("rules")
def rules(json_out: JsonOpt = False) -> None:
    """List the gate's rules, one line each."""
    rows = [{"id": r.id, "summary": r.summary} for r in gate.RULES]
    if want_json(json_out):
        emit_json(rows)
    else:
        table(f"{len(rows)} rules", ["rule", "checks"], [(r["id"], r["summary"]) for r in rows])
