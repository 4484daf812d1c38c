"""`ledger serve` (the MCP server) and `ledger demo` (the offline end-to-end tour)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import STATE, AllowRootOpt, ConstitutionOpt
from cli.render import err, fail


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)


def serve(
    transport: Annotated[
        str,
        typer.Option(
            "--transport", help="stdio (default) or http (streamable HTTP, loopback, bearer token)."
        ),
    ] = "stdio",
    host: Annotated[str, typer.Option("--host", help="HTTP host (loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port (0 = any free port).")] = 0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="LEDGER_TOKEN",
            help="Bearer token the main agent uses over HTTP (default: generated, printed on stderr).",
        ),
    ] = None,
    constitution: ConstitutionOpt = None,
    allow_root: AllowRootOpt = None,
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, help="Agents running at once.")
    ] = 5,
    model: Annotated[
        str | None,
        typer.Option("--model", help="provider/model for agents (default: the project's opencode.json)."),
    ] = None,
    scripted_model: Annotated[
        str | None,
        typer.Option(
            "--scripted-model",
            envvar="LEDGER_SCRIPTED_MODEL_URL",
            help="Base URL (…/v1) of a scripted OpenAI-compatible model (offline demo and tests).",
        ),
    ] = None,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated",
            help="Run OpenCode with its own config and data folders (never the user's own setup).",
        ),
    ] = False,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Where agents' OpenCode state lives.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Default per-delegation timeout (s).")] = 900.0,
    pool_size: Annotated[
        int,
        typer.Option(
            "--pool-size",
            envvar="LEDGER_POOL_SIZE",
            min=0,
            help="OpenCode servers kept started and warmed up for the next spawns (single use, "
            "~350 MB each; 0 = start each agent's server cold).",
        ),
    ] = 2,
    keep_agent_state: Annotated[
        bool,
        typer.Option(
            "--keep-agent-state",
            help="Keep each ended agent's OpenCode state (its database, temporary files) beside its "
            "opencode.log in the work dir (default: only the log stays).",
        ),
    ] = False,
) -> None:
    """Run the MCP server (stdio for a local client; streamable HTTP on loopback with a bearer token)."""
    from engine.recovery import summary as recovery_summary
    from engine.runtime import Engine, configure_telemetry
    from engine.settings import EngineSettings
    from engine.tokens import OPERATOR
    from gate import ConstitutionError

    if transport not in ("stdio", "http"):
        fail(f"--transport: expected stdio or http (got {transport!r})")
    if transport == "http" and host not in ("127.0.0.1", "localhost", "::1"):
        fail(f"--host: the HTTP transport serves loopback only (got {host!r})")
    roots = tuple(str(p.resolve()) for p in (allow_root or [Path.cwd()]))
    settings = EngineSettings(
        db_path=STATE.db_path,
        constitution_path=constitution,
        allowed_roots=roots,
        max_concurrent=max_concurrent,
        model=model,
        isolated=isolated,
        work_dir=work_dir,
        default_timeout_s=timeout,
        pool_size=pool_size,
        keep_agent_state=keep_agent_state,
    )
    configure_telemetry()

    async def run() -> None:
        engine = Engine(settings, model_base_url=scripted_model)
        engine.notify = err.print  # sessions of another engine that dies meanwhile, as they are settled
        try:
            await engine.start(http_port=port if transport == "http" else None)
        except ConstitutionError as exc:
            fail(f"constitution refused: {exc}")
        recovered = recovery_summary(engine.recovery)
        if recovered is not None:
            err.print(recovered)
        try:
            if transport == "http":
                main_token = token or secrets.token_urlsafe(32)
                engine.tokens.issue(OPERATOR, token=main_token)
                err.print(
                    f"MCP over streamable HTTP at {engine.agent_mcp_url} (Authorization: Bearer "
                    f"{'<given token>' if token else main_token})"
                )
                await asyncio.Event().wait()
            else:
                assert engine.mcp is not None
                await engine.mcp.run_stdio_async(show_banner=False, log_level="WARNING")
        finally:
            await engine.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def demo(
    keep: Annotated[Path | None, typer.Option("--dir", help="Keep the demo's files in this folder.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Offline end to end: scripted model, our MCP server over stdio, a two-hop chain, a refusal, a stop, verify."""
    from cli.demo import run_demo

    os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")
    ok = asyncio.run(run_demo(keep, json_out or STATE.json))
    sys.stdout.flush()
    raise typer.Exit(0 if ok else 1)
