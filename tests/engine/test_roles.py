"""The role catalogue (engine/roles.py): read on every spawn, parsed once per version of a file."""

from __future__ import annotations

import os
from pathlib import Path

from engine.roles import load_catalogue


def role_file(project: Path, name: str, description: str) -> Path:
    path = project / ".delegation-ledger" / "roles" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\nname: {name}\ndescription: {description}\n---\nYou are {name}.\n")
    return path


def test_a_project_role_is_read_again_when_its_file_changes(tmp_path: Path) -> None:
    path = role_file(tmp_path, "auditor", "checks things")
    assert load_catalogue(str(tmp_path))["auditor"].description == "checks things"
    stat = path.stat()
    role_file(tmp_path, "auditor", "checks other things")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # even within one clock tick
    assert load_catalogue(str(tmp_path))["auditor"].description == "checks other things"
    path.write_text("---\n- not a mapping\n---\n")
    assert "auditor" not in load_catalogue(str(tmp_path))  # unreadable: skipped, as before
    path.unlink()
    assert "auditor" not in load_catalogue(str(tmp_path))
    assert "tester" in load_catalogue(str(tmp_path))  # the built-in ones stay
