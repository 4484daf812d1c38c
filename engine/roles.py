"""The role catalogue: markdown files with frontmatter, merged with OpenCode's own agents.

Folders searched, later ones overriding earlier ones: the built-in roles shipped with the engine,
the user's (`<user config>/roles`), any configured folders, and the project's
(`<project_directory>/.delegation-ledger/roles`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from ledger.paths import APP

BUILTIN = Path(__file__).parent / "roles"
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?(.*)\Z", re.S)


@dataclass(frozen=True)
class Role:
    name: str
    description: str = ""
    model: str | None = None
    prompt: str = ""
    permission: dict[str, Any] = field(default_factory=dict)
    source: str = "catalogue"
    capabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "source": self.source,
            "capabilities": list(self.capabilities),
            "permission": self.permission,
        }


def parse_role(path: Path) -> Role:
    text = path.read_text(encoding="utf-8")
    m = _FRONT.match(text)
    meta: dict[str, Any] = {}
    body = text
    if m:
        loaded = yaml.safe_load(m.group(1)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: frontmatter is not a mapping")
        meta, body = loaded, m.group(2)
    caps = meta.get("capabilities") or []
    return Role(
        name=str(meta.get("name") or path.stem),
        description=str(meta.get("description") or body.strip().splitlines()[0] if body.strip() else ""),
        model=meta.get("model"),
        prompt=body.strip(),
        permission=dict(meta.get("permission") or {}),
        source=str(path),
        capabilities=tuple(str(c) for c in caps),
    )


@functools.lru_cache(maxsize=512)
def _parsed(path: str, mtime_ns: int, size: int) -> Role:
    """``parse_role``, once per version of the file (every spawn reads the catalogue, twice)."""
    return parse_role(Path(path))


def role_dirs(project_directory: str | None, extra: Iterable[Path] = ()) -> list[Path]:
    dirs = [BUILTIN, Path(platformdirs.user_config_dir(APP)) / "roles", *extra]
    if project_directory:
        dirs.append(Path(project_directory) / ".delegation-ledger" / "roles")
    return dirs


def load_catalogue(project_directory: str | None, extra: Iterable[Path] = ()) -> dict[str, Role]:
    """Every role found, by name; unreadable files are skipped (and named by `catalogue_errors`)."""
    roles: dict[str, Role] = {}
    for d in role_dirs(project_directory, extra):
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.md")):
            try:
                stat = path.stat()
                role = _parsed(str(path), stat.st_mtime_ns, stat.st_size)
            except (OSError, ValueError, yaml.YAMLError):
                continue
            roles[role.name] = role
    return roles


def merge_opencode_agents(roles: dict[str, Role], agents: Iterable[dict[str, Any]]) -> dict[str, Role]:
    """Add OpenCode's agents (GET /agent) that the catalogue does not define."""
    merged = dict(roles)
    for a in agents:
        name = a.get("name")
        if name and name not in merged and a.get("mode") != "primary":
            merged[name] = Role(
                name=name, description=a.get("description") or "", source="opencode", permission={}
            )
    return merged
