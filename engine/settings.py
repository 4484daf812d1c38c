"""Engine settings: where the ledger, constitution and roles are, limits, how OpenCode runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from gate import Constitution, default_constitution, load_constitution
from ledger.paths import APP, default_db_path


@dataclass
class EngineSettings:
    db_path: Path = field(default_factory=default_db_path)
    constitution_path: Path | None = None
    #: used when no constitution file exists: the default profile with these allowed roots
    allowed_roots: tuple[str, ...] = ()
    max_concurrent: int = 5
    default_timeout_s: float = 900.0
    #: extra role folders (besides <project>/.delegation-ledger/roles, the user's and the built-in ones)
    roles_dirs: tuple[Path, ...] = ()
    #: OpenCode: inline provider config (e.g. the scripted model) and model id; None = the project's
    #: own opencode.json and the user's credentials
    provider_config: dict[str, Any] | None = None
    model: str | None = None
    #: isolated = own XDG/config/data folders (tests, demo); never touches the user's OpenCode setup
    isolated: bool = False
    work_dir: Path | None = None
    #: where sub-agents reach our MCP server (loopback HTTP, bearer token per session)
    agent_mcp_host: str = "127.0.0.1"
    agent_mcp_port: int = 0
    stop_grace_s: float = 3.0
    #: warm pool: OpenCode servers kept started and warmed up in the background, each used by one
    #: agent only (engine/opencode_pool.py); a spawn takes one instead of a ~2 CPU-s cold start.
    #: Each idle pooled server holds ~350 MB. 0 turns the pool off (every spawn starts cold).
    pool_size: int = 2
    #: pay the first turn's CPU in the pool with a throwaway exchange (never reaches the real model)
    pool_warmup: bool = True
    #: keep an ended agent's OpenCode state (its own database, temporary files: ~6 MB each in isolated
    #: mode) instead of only its opencode.log; the ledger holds the record either way
    keep_agent_state: bool = False


def load_constitution_file(settings: EngineSettings) -> Constitution:
    """The constitution in force. A broken file is refused with its line and reason (ConstitutionError)."""
    path = settings.constitution_path
    if path is None:
        env = os.environ.get("LEDGER_CONSTITUTION")
        candidate = Path(env) if env else Path(platformdirs.user_config_dir(APP)) / "constitution.toml"
        path = candidate if (env or candidate.exists()) else None
    if path is not None:
        return load_constitution(Path(path).read_text(encoding="utf-8"), source=str(path))
    base = default_constitution()
    if settings.allowed_roots:
        return base.model_copy(
            update={"allowed_roots": tuple(os.path.abspath(r) for r in settings.allowed_roots)}
        )
    return base
