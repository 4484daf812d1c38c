"""DIR-01, ROLE-01: facts about the world, resolved by the engine and handed in (the gate reads no disk)."""

from __future__ import annotations

import difflib
import os.path

from gate.rules.base import Rule
from gate.subject import Subject
from schemas.events import Finding


def inside(path: str, root: str) -> bool:
    """True when the normalised `path` is `root` or lies below it (lexically: both are real paths)."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class DirectoryAllowed(Rule):
    id = "DIR-01"
    summary = "project_directory exists, is a directory and resolves (symlinks too) inside the allowed roots"
    needs = frozenset({"project_directory"})

    def check(self, s: Subject) -> list[Finding]:
        given = s.project_directory
        assert given is not None
        path = "project_directory"
        if not os.path.isabs(given):
            return [
                s.finding(
                    self.id,
                    path,
                    f"project_directory ({given!r}) is not an absolute path",
                    expected="an absolute path",
                    actual=given,
                )
            ]
        facts = s.chain.directory
        if facts is None:
            return [
                s.finding(
                    self.id,
                    path,
                    f"project_directory ({given!r}) was not resolved by the caller: whether it exists "
                    "inside the allowed roots was not checked",
                    expected="directory facts from the caller",
                    actual=None,
                    severity=s.soft,
                )
            ]
        problem: str | None = None
        expected: object = None
        actual: object = None
        roots = list(s.constitution.allowed_roots)
        if facts.path != given:
            problem = f"the caller resolved {facts.path!r}, not project_directory ({given!r})"
            expected, actual = given, facts.path
        elif not facts.exists:
            problem = f"project_directory ({given!r}) does not exist"
            expected, actual = "an existing directory", "missing"
        elif not facts.is_dir:
            problem = f"project_directory ({given!r}) is not a directory"
            expected, actual = "a directory", "not a directory"
        elif facts.real_path is None or not os.path.isabs(facts.real_path):
            problem = f"project_directory ({given!r}) could not be resolved to a real path"
            expected, actual = "an absolute real path", facts.real_path
        elif not roots:
            problem = (
                f"project_directory ({given!r}) cannot be inside an allowed root: the constitution "
                "allows none; add allowed_roots = [...]"
            )
            expected, actual = roots, facts.real_path
        elif not any(inside(facts.real_path, root) for root in roots):
            via = "" if os.path.normpath(given) == facts.real_path else " through a symlink"
            problem = (
                f"project_directory ({given!r}) resolves{via} to {facts.real_path!r}, outside the "
                f"allowed roots ({', '.join(repr(r) for r in roots)})"
            )
            expected, actual = roots, facts.real_path
        if problem is None:
            return []
        return [s.finding(self.id, path, problem, expected=expected, actual=actual)]


class RoleKnown(Rule):
    id = "ROLE-01"
    summary = "the role exists in the role catalogue (the refusal lists the roles that do)"
    needs = frozenset({"role"})

    def check(self, s: Subject) -> list[Finding]:
        role = s.role
        assert role is not None
        known = s.chain.known_roles
        if known is None:
            return [
                s.finding(
                    self.id,
                    "role",
                    f"the role catalogue was not available: role {role!r} was not checked",
                    expected="a role from the catalogue",
                    actual=role,
                    severity=s.soft,
                )
            ]
        if role in known:
            return []
        names = sorted(known)
        close = difflib.get_close_matches(role, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return [
            s.finding(
                self.id,
                "role",
                f"role {role!r} is not in the role catalogue "
                f"(known roles: {', '.join(names) or 'none'}){hint}",
                expected=names,
                actual=role,
            )
        ]
