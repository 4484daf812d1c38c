"""From an approved delegation to OpenCode permission rules, and answers to `permission.asked`.

The constitution is enforced while the agent runs, not only at the door (GATE_RULES.md, "From
verdict to runtime"). With structured scopes, each OpenCode permission is allowed only when a
scope grants its action: `fs/read`, `fs/write` (edit), `shell/exec` or `shell#exec` (bash),
`net/fetch` (webfetch). With free-text capabilities only (ct_dev compatibility), the agent may read
and edit inside its project and run commands; fetching from the network, leaving the project
directory and anything unknown are refused. Every question OpenCode asks is answered by
`PermissionPolicy.decide`, and the engine records the answer; nothing waits for a human.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.write_scope import grants_write, project_relative, within, worktree_of, write_scopes
from schemas.requests import SpawnRequest

Reply = Literal["once", "always", "reject"]

#: OpenCode permission -> the scope action that grants it
_ACTION_OF = {
    "read": "fs/read",
    "list": "fs/read",
    "glob": "fs/read",
    "grep": "fs/read",
    "edit": "fs/write",
    "write": "fs/write",
    "bash": "shell/exec",
    "webfetch": "net/fetch",
    "websearch": "net/fetch",
    "task": "agent/delegate",
    "external_directory": "fs/external",
}
_ALIASES = {"shell#exec": "shell/exec", "net#fetch": "net/fetch"}


def _granted_actions(scopes: list[str]) -> set[str]:
    actions = set()
    for s in scopes:
        resource, _, action = s.partition("#")
        actions.add(action)
        base = resource.split(":", 1)[0]
        if base in ("shell", "net", "agent"):
            actions.add(f"{base}/{action}")
    return actions


def _covers(actions: set[str], wanted: str) -> bool:
    parts = wanted.split("/")
    return any(wanted == a or "/".join(parts[: len(a.split("/"))]) == a for a in actions)


#: the read rule of every delegation that may read: OpenCode's own default asks for these files
SECRET_FILES_DENIED = {"*": "allow", "*.env": "deny", "*.env.*": "deny", "*.env.example": "allow"}

#: What configures the agents of a project, by the name a scope gives it: OpenCode's config, its
#: `.opencode/` folder (plugins and custom tools are code that every later OpenCode server started
#: there runs, outside any permission rule; agents and permissions) and the ledger's role catalogue
#: (later agents' system prompts, and which roles exist). A delegated agent may edit none of them,
#: whatever its scopes, unless a write scope names it (`repo:.opencode/**#fs/write`): otherwise one
#: delegation could widen the next ones, or run code unchecked, from inside the project. The patterns
#: are OpenCode's (its `*` crosses `/`; it matches the path relative to the worktree, which is "/" for
#: a folder outside git, hence the `*/` forms), judged the same way by `decide` and the audit.
AGENT_CONFIG = {
    "opencode.json": ("opencode.json", "*/opencode.json"),
    "opencode.jsonc": ("opencode.jsonc", "*/opencode.jsonc"),
    ".opencode": (".opencode/*", "*/.opencode/*"),
    ".delegation-ledger": (".delegation-ledger/*", "*/.delegation-ledger/*"),
}


def _edit_rule(scopes: list[str] | None) -> dict[str, str]:
    """The edit/write rule of a delegation that may edit: anything but the agents' configuration that
    no write scope names (see AGENT_CONFIG)."""
    named = set()
    for scope in filter(grants_write, scopes or []):
        path = scope.partition("#")[0].partition(":")[2]
        named.update(n for n in AGENT_CONFIG if path == n or path.startswith(n + "/"))
    rule = {"*": "allow"}
    for name, patterns in AGENT_CONFIG.items():
        if name not in named:
            rule.update(dict.fromkeys(patterns, "deny"))
    return rule


def pattern_action(rule: dict[str, Any], target: str) -> str:
    """The action of a {pattern: action} rule for `target`: the last matching pattern wins (as in
    OpenCode), on the whole path or its file name; none matching: deny. (The audit judges recorded
    rules with it too, whose values may be anything: text of them.)"""
    action: Any = "deny"
    name = target.rsplit("/", 1)[-1]
    for pattern, value in rule.items():
        if fnmatch.fnmatchcase(target, pattern) or fnmatch.fnmatchcase(name, pattern):
            action = value
    return str(action)


@dataclass(frozen=True)
class PermissionPolicy:
    """The runtime permissions of one agent, derived from its approved request."""

    #: permission -> "allow" | "deny", or {pattern: action} (the last matching pattern wins, as in OpenCode)
    rules: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    #: the `repo:` path scopes that limit writing (engine.write_scope), and where OpenCode's paths start
    write_scopes: tuple[str, ...] = ()
    project: str = ""
    worktree: str = "/"

    @classmethod
    def from_request(cls, request: SpawnRequest) -> PermissionPolicy:
        dc = request.delegation_context
        constraints = tuple(dc.constraints)
        rules: dict[str, str] = {}
        reasons: dict[str, str] = {}
        if dc.scopes is not None:
            actions = _granted_actions(dc.scopes)
            for perm, action in _ACTION_OF.items():
                # leaving the project needs an explicit fs/external: `repo:src/**#fs` is about the repo
                ok = action in actions if perm == "external_directory" else _covers(actions, action)
                rules[perm] = "allow" if ok else "deny"
                reasons[perm] = (
                    f"scope grants {action}"
                    if ok
                    else f"no scope of the delegation grants {action} (scopes: {', '.join(dc.scopes)})"
                )
        else:
            for perm in ("read", "list", "glob", "grep", "edit", "write", "bash"):
                rules[perm] = "allow"
                reasons[perm] = "free-text capability: allowed inside the project directory"
            for perm in ("webfetch", "websearch", "external_directory"):
                rules[perm] = "deny"
                reasons[perm] = "free-text capability: no network and nothing outside the project directory"
            rules["task"] = "deny"
            reasons["task"] = (
                "nested delegation goes through the ledger's spawn_agent tool, not OpenCode's task"
            )
        if rules.get("read") == "allow":
            # secrets stay out of reach whatever the capability (OpenCode itself only asks for them)
            rules["read"] = dict(SECRET_FILES_DENIED)
            reasons["read"] = reasons.get("read", "allowed") + "; .env files (secrets) are denied"
        for perm in ("edit", "write"):
            if rules.get(perm) == "allow":
                rules[perm] = _edit_rule(dc.scopes)
                kept = [n for n, pats in AGENT_CONFIG.items() if rules[perm].get(pats[0]) == "deny"]
                if kept:
                    reasons[perm] = (
                        reasons.get(perm, "allowed") + f"; the agents' configuration ({', '.join(kept)}) is "
                        "not editable unless a write scope names it"
                    )
        limited = write_scopes(dc.scopes) if isinstance(rules.get("edit"), dict) else None
        if limited:  # OpenCode asks about every file; `decide` answers by the scopes' paths
            for perm in ("edit", "write"):
                if isinstance(rules.get(perm), dict):
                    rules[perm]["*"] = "ask"
                    reasons[perm] = (
                        f"{reasons[perm]}; only inside the write scope(s) {', '.join(limited)}, "
                        "judged on each file OpenCode asks about"
                    )
        rules["doom_loop"] = "deny"
        reasons["doom_loop"] = "repeated identical tool calls are refused"
        # OpenCode's `question` tool waits for a human answer that never comes in a headless server
        rules["question"] = "deny"
        reasons["question"] = "no human answers questions during a delegation; put them in the final answer"
        lowered = " ".join(constraints).lower()
        if any(k in lowered for k in ("no shell", "no bash", "read-only", "read only")):
            for perm in ("bash", "edit", "write") if "read" in lowered else ("bash",):
                rules[perm] = "deny"
                reasons[perm] = f"constraint forbids it: {constraints}"
        if not limited or not isinstance(rules.get("edit"), dict):
            return cls(rules, reasons, constraints)
        project = os.path.realpath(request.project_directory)
        return cls(rules, reasons, constraints, limited, project, worktree_of(project))

    def opencode_config(self) -> dict[str, Any]:
        """The `permission` block of the agent's OpenCode config."""
        # every rule: OpenCode takes any permission name (grep, glob, list... are permissions of their own)
        return dict(self.rules)

    def decide(self, permission: str, patterns: list[str] | None = None) -> tuple[Reply, str]:
        """Answer one `permission.asked`: ('once' | 'reject', the reason recorded on the ledger)."""
        rule = self.rules.get(permission)
        if isinstance(rule, dict) and rule.get("*") == "ask" and self.write_scopes:
            return self._decide_write(permission, rule, patterns or [])
        if isinstance(rule, dict):
            actions = [pattern_action(rule, p) for p in (patterns or ["*"])]
            if all(a == "allow" for a in actions):
                return "once", self.reasons.get(permission, "allowed by the delegation")
            return (
                "reject",
                f"{permission} of {', '.join(patterns or ['*'])} is denied by the delegation's rules",
            )
        if rule == "allow":
            return "once", self.reasons.get(permission, "allowed by the delegation")
        if rule is None:
            return (
                "reject",
                f"permission {permission!r} is not granted by the delegation (unknown to the policy)",
            )
        return "reject", self.reasons.get(permission, "denied by the delegation")

    def _decide_write(self, permission: str, rule: dict[str, Any], patterns: list[str]) -> tuple[Reply, str]:
        """An edit or write limited by path scopes: every file inside one of them, and none of the
        agents' configuration that no scope names."""
        if not patterns:
            return (
                "reject",
                f"{permission} without a file to judge is refused (write scopes limit it by path)",
            )
        granted = []
        for path in patterns:
            rel = project_relative(path, self.project, self.worktree)
            if pattern_action(rule, path) == "deny" or (
                rel is not None and pattern_action(rule, rel) == "deny"
            ):
                return "reject", f"{permission} of {path}: the agents' configuration is not editable"
            scope = None if rel is None else within(self.write_scopes, rel)
            if scope is None:
                where = "outside the project" if rel is None else f"repo:{rel}"
                return (
                    "reject",
                    f"{permission} of {path} ({where}) is outside the delegation's write scope(s) "
                    f"{', '.join(self.write_scopes)}",
                )
            granted.append(f"{rel} by {scope}")
        return "once", f"{permission} of {'; '.join(granted)}"
