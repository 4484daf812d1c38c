"""Where a delegation may write: the paths of its `repo:` write scopes, judged at run time.

A scope such as `repo:src/**#fs/write` lets its agent write under `src/` of its project and nowhere
else. OpenCode's own patterns cannot say that exactly (its `*` crosses `/`, and the gate reads a `*`
inside a segment literally), so such an agent's edit and write rules are `ask`: OpenCode asks about
every file, and the policy answers with the gate's own scope matching (`gate.matches`) on the file's
path relative to the project. OpenCode names the file relative to its worktree: the git work tree
holding the project, or `/` for a folder outside git (`worktree_of`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import gate


def grants_write(scope: str) -> bool:
    """Whether `scope` grants writing files: its action is `fs/write` or `fs`, which covers it."""
    return scope.partition("#")[2] in ("fs", "fs/write")


def write_scopes(scopes: Iterable[str] | None) -> tuple[str, ...] | None:
    """The scopes that grant writing, when every one of them is a path inside the project (`repo:...`,
    not the whole `repo:**`): writes are then limited to those paths. None when writing is not limited
    by path (no scopes, a whole-repo scope, or one of another kind)."""
    granting = []
    for scope in scopes or ():
        resource = scope.partition("#")[0]
        if not grants_write(scope):
            continue
        if not resource.startswith("repo:") or resource in ("repo:", "repo:**"):
            return None
        granting.append(scope)
    return tuple(granting) or None


def worktree_of(project: str) -> str:
    """The folder OpenCode names files relative to: the nearest folder holding `.git`, from the project
    up, else `/`."""
    here = os.path.realpath(project)
    while True:
        if os.path.exists(os.path.join(here, ".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return "/"
        here = parent


def project_relative(path: str, project: str, worktree: str = "/") -> str | None:
    """`path` (absolute, or relative to `worktree` as OpenCode gives it) relative to the project, with
    `/` separators; None when it is not a file inside the project."""
    absolute = os.path.normpath(path if os.path.isabs(path) else os.path.join(worktree, path))
    rel = os.path.relpath(absolute, os.path.normpath(project))
    if rel == "." or rel == ".." or rel.startswith("../"):
        return None
    return rel.replace(os.sep, "/")


def within(scopes: Iterable[str], rel: str) -> str | None:
    """The first of `scopes` that lets its holder write the project file `rel`, else None."""
    concrete = f"repo:{rel}#fs/write"
    return next((s for s in scopes if gate.matches(s, concrete)), None)
