"""The typer application: global options, command registration, exit-code mapping.

Exit codes: 0 fine, 1 a problem was found (tampering, drift, refusal, audit finding),
2 bad usage or bad input (typer's own usage errors exit 2 too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import ledger_cmds, query_cmds
from cli.options import STATE
from cli.render import fail
from ledger import LedgerError

app = typer.Typer(
    name="ledger",
    help="delegation-ledger: responsibility-checked delegation to OpenCode agents, on a signed, "
    "hash-chained ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            envvar="LEDGER_DB",
            help="Ledger database file (default: the platform's user data folder).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON output for every command.")
    ] = False,
) -> None:
    STATE.db = db
    STATE.json = json_out


ledger_cmds.register(app)
query_cmds.register(app)


def _register_optional() -> None:
    """Commands whose modules depend on the gate and the engine (added as those land)."""
    import importlib

    for name in ("cli.gate_cmds", "cli.engine_cmds", "cli.audit_cmds"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)


_register_optional()


def main() -> None:
    try:
        app()
    except LedgerError as exc:
        fail(exc.diagnostics())


if __name__ == "__main__":
    main()
