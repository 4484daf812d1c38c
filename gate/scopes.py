"""Scope matching for ATT-01: `<resource>#<action>`, conservative, never accepting an escalation.

Grammar (GATE_RULES.md, "Scope grammar"; syntax itself is checked by `schemas.Scope`):

- a resource is `/`-separated segments. A segment that is exactly `*` matches any one segment; a
  last segment that is exactly `**` matches the rest, zero or more segments (so `repo:src/**`
  matches `repo:src`, `repo:src/a` and `repo:src/a/b`). A `*` inside a longer segment (`*.py`) is
  an ordinary character: only the identical segment covers it.
- a resource that is exactly `<kind>:**` (a kind: a letter, then letters, digits, `_`, `.`, `-`)
  matches every resource whose first segment starts with `<kind>:`, whatever follows: `repo:**` is
  the whole repo (`repo:`, `repo:src`, `repo:src/a` ...), never `net:x` nor a `*` first segment.
- an action is `/`-separated segments; a shorter action covers every longer action that extends
  it segment by segment: `fs` covers `fs` and `fs/write`, never `fsx`.

`covers(parent, child)` holds only when every concrete scope that `child` matches is matched by
`parent` as well; it is reflexive and transitive. Parsed patterns are cached, and a `ScopeSet`
compiles a hop's scopes into a trie over resource segments, so that finding the scope covering a
child costs one walk down the child's segments instead of a comparison with every parent scope.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ScopePattern",
    "ScopeSet",
    "compile_scope_set",
    "compile_scopes",
    "covered_by",
    "covers",
    "matches",
    "parse_scope",
]

_ONE = "*"
_REST = "**"
#: `<kind>:**`, the whole of one kind of resource
_KIND_REST = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*:)\*\*")


@dataclass(frozen=True, slots=True)
class ScopePattern:
    """A parsed scope: resource segments (without a trailing `**`), whether `**` ends it, action segments;
    `kind` (`"repo:"`) for a `<kind>:**` resource, whose segments are then empty and `rest` true."""

    text: str
    resource: tuple[str, ...]
    rest: bool
    action: tuple[str, ...]
    kind: str | None = None

    def __str__(self) -> str:
        return self.text


@lru_cache(maxsize=8192)
def parse_scope(text: str) -> ScopePattern:
    """Parse `<resource>#<action>`; ValueError on a scope the grammar refuses."""
    resource, sep, action = text.partition("#")
    if not sep or not resource or not action or "#" in action:
        raise ValueError(f"not a scope '<resource>#<action>' (got {text!r})")
    segments = resource.split("/")
    action_segments = tuple(action.split("/"))
    if "" in segments or "" in action_segments:
        raise ValueError(f"scope {text!r} has an empty segment")
    kind = _KIND_REST.fullmatch(resource)
    if kind is not None and not any("*" in seg for seg in action_segments):
        return ScopePattern(text=text, resource=(), rest=True, action=action_segments, kind=kind.group(1))
    rest = segments[-1] == _REST
    if rest:
        segments.pop()
    if any(_REST in seg for seg in segments) or any("*" in seg for seg in action_segments):
        raise ValueError(
            f"scope {text!r} has a '**' that is neither the whole last resource segment nor '<kind>:**'"
        )
    return ScopePattern(text=text, resource=tuple(segments), rest=rest, action=action_segments)


def _pattern(scope: str | ScopePattern) -> ScopePattern:
    return scope if isinstance(scope, ScopePattern) else parse_scope(scope)


def covers(parent: str | ScopePattern, child: str | ScopePattern) -> bool:
    """True when every concrete scope matched by `child` is matched by `parent`."""
    p = _pattern(parent)
    c = _pattern(child)
    # Action: the parent's segments are a prefix of the child's.
    pa, ca = p.action, c.action
    if len(ca) < len(pa) or ca[: len(pa)] != pa:
        return False
    if p.kind is not None or c.kind is not None:
        return _kind_covers(p, c)
    pr, cr = p.resource, c.resource
    if p.rest:
        # The parent's fixed part must cover the child's first segments; the rest is free.
        if len(cr) < len(pr):
            return False
    elif c.rest or len(cr) != len(pr):
        # A fixed-length parent cannot cover a child of another length or an open-ended child.
        return False
    return all(ps in (_ONE, cs) for ps, cs in zip(pr, cr, strict=False))


def _in_kind(kind: str, first: str) -> bool:
    """Whether a literal first segment is a resource of ``kind`` (a `*` may be any segment)."""
    return first != _ONE and first.startswith(kind)


def _kind_covers(p: ScopePattern, c: ScopePattern) -> bool:
    """Resource coverage when either side is `<kind>:**` (actions already compared)."""
    if p.kind is not None:  # the same kind, or a resource of that kind by its first segment
        return c.kind == p.kind or (c.kind is None and bool(c.resource) and _in_kind(p.kind, c.resource[0]))
    # c is the whole of a kind: one or more segments, the first any name of that kind; only `**` and
    # `*/**` match all of them
    return p.rest and p.resource in ((), (_ONE,))


def covered_by(parents: Sequence[ScopePattern], child: ScopePattern) -> ScopePattern | None:
    """The first of `parents` that covers `child`, or None."""
    for parent in parents:
        if parent.text == child.text or covers(parent, child):
            return parent
    return None


def matches(pattern: str | ScopePattern, concrete: str) -> bool:
    """True when the concrete scope `concrete` (`<resource>#<action>`, no wildcards) is matched."""
    p = _pattern(pattern)
    resource, _, action = concrete.partition("#")
    segments = resource.split("/")
    actions = tuple(action.split("/"))
    if len(actions) < len(p.action) or actions[: len(p.action)] != p.action:
        return False
    if p.kind is not None:
        return segments[0].startswith(p.kind)
    if len(segments) < len(p.resource) or (not p.rest and len(segments) != len(p.resource)):
        return False
    return all(ps in (_ONE, seg) for ps, seg in zip(p.resource, segments, strict=False))


def compile_scopes(scopes: Iterable[str]) -> tuple[ScopePattern, ...]:
    """Parse every scope (cached per string)."""
    return tuple(parse_scope(s) for s in scopes)


class _Node:
    """A trie node: literal children, a `*` child, and the patterns that end here (open or fixed)."""

    __slots__ = ("fixed", "literal", "open", "star")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.open: list[ScopePattern] = []  # patterns whose fixed part ends here, followed by `**`
        self.fixed: list[ScopePattern] = []  # patterns that end here exactly


def _action_covers(parent: tuple[str, ...], child: tuple[str, ...]) -> bool:
    return len(child) >= len(parent) and child[: len(parent)] == parent


class ScopeSet:
    """A fixed set of scopes, compiled for `covering(child)`: the same answer as trying `covers` on each.

    Answers are memoised per child scope (the set is immutable and coverage is pure), so a hop
    that many children delegate under pays for each distinct child scope once.
    """

    __slots__ = ("_kinds", "_memo", "_root", "patterns")

    _MEMO_LIMIT = 4096

    def __init__(self, scopes: Iterable[str | ScopePattern]) -> None:
        self.patterns: tuple[ScopePattern, ...] = tuple(_pattern(s) for s in scopes)
        self._root = _Node()
        self._memo: dict[str, ScopePattern | None] = {}
        self._kinds: dict[str, list[ScopePattern]] = {}  # `<kind>:**` scopes, by kind
        for pattern in self.patterns:
            if pattern.kind is not None:
                self._kinds.setdefault(pattern.kind, []).append(pattern)
                continue
            node = self._root
            for segment in pattern.resource:
                if segment == _ONE:
                    node.star = node.star or _Node()
                    node = node.star
                else:
                    node = node.literal.setdefault(segment, _Node())
            (node.open if pattern.rest else node.fixed).append(pattern)

    def __len__(self) -> int:
        return len(self.patterns)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.patterns]

    def covering(self, child: str | ScopePattern) -> ScopePattern | None:
        """A scope of this set that covers `child`, or None when none does."""
        c = _pattern(child)
        memo = self._memo
        if c.text in memo:
            return memo[c.text]
        found = self._kind_cover(c) if self._kinds or c.kind is not None else None
        if found is None and c.kind is None:
            found = self._walk(self._root, c, 0)
        if len(memo) >= self._MEMO_LIMIT:
            memo.clear()
        memo[c.text] = found
        return found

    def _kind_cover(self, child: ScopePattern) -> ScopePattern | None:
        """A cover involving `<kind>:**`: a parent of the child's kind, or `**` / `*/**` for a child
        that is the whole of a kind."""
        if child.kind is not None:
            star = self._root.star
            candidates = [*self._kinds.get(child.kind, ()), *self._root.open, *(star.open if star else ())]
        elif child.resource and child.resource[0] != _ONE:
            first = child.resource[0]
            candidates = [p for kind, ps in self._kinds.items() if first.startswith(kind) for p in ps]
        else:
            return None
        for parent in candidates:
            if _action_covers(parent.action, child.action):
                return parent
        return None

    def _walk(self, node: _Node, child: ScopePattern, depth: int) -> ScopePattern | None:
        # A parent whose fixed part matched the child's first `depth` segments and then ends in `**`
        # covers whatever follows, provided its action does.
        for parent in node.open:
            if _action_covers(parent.action, child.action):
                return parent
        segments = child.resource
        if depth == len(segments):
            if not child.rest:
                for parent in node.fixed:
                    if _action_covers(parent.action, child.action):
                        return parent
            return None
        segment = segments[depth]
        if segment != _ONE:
            below = node.literal.get(segment)
            if below is not None:
                found = self._walk(below, child, depth + 1)
                if found is not None:
                    return found
        if node.star is not None:
            return self._walk(node.star, child, depth + 1)
        return None


@lru_cache(maxsize=2048)
def compile_scope_set(scopes: tuple[str, ...]) -> ScopeSet:
    """The compiled set for these scope strings, shared by every hop that carries the same ones."""
    return ScopeSet(scopes)
