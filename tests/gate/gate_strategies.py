"""Hypothesis strategies for the gate: scopes (with their narrowings, widenings and concrete instances),
sound delegation chains, and mutations of requests.

Named gate_strategies, not strategies: pytest puts tests/gate on sys.path, where a strategies.py
would shadow tests/strategies.py for the other suites' `from strategies import ...`. Import it as
`tests.gate.gate_strategies`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from gate.normalise import norm_text
from gate.scopes import parse_scope
from tests.gate.gate_builders import at, delegate, virtual_request

#: A segment no generated pattern contains literally: only a wildcard can match it.
FRESH = "qq"

literal_segments = st.one_of(
    st.sampled_from(["a", "b", "src", "repo:src", "api", "x.py", "*.py", "net"]),
    st.text("abc", min_size=1, max_size=3),
)
resource_segments = st.one_of(literal_segments, st.just("*"))
action_segments = st.sampled_from(["fs", "write", "read", "exec", "shell", "fetch"])
concrete_segments = st.one_of(literal_segments, st.text("abcz:.", min_size=1, max_size=4))
#: kinds of `<kind>:**` scopes ("re" is a prefix of "repo" but never its kind: "re:" is not "repo:")
kinds = st.sampled_from(["repo", "re", "net"])


@st.composite
def scopes(draw: st.DrawFn) -> str:
    """A scope pattern of the gate's grammar (also valid for schemas.Scope)."""
    if draw(st.integers(0, 5)) == 0:
        return f"{draw(kinds)}:**#" + "/".join(draw(st.lists(action_segments, min_size=1, max_size=3)))
    rest = draw(st.booleans())
    segments = draw(st.lists(resource_segments, min_size=0 if rest else 1, max_size=4))
    action = draw(st.lists(action_segments, min_size=1, max_size=3))
    return "/".join([*segments, *(["**"] if rest else [])]) + "#" + "/".join(action)


@st.composite
def instances(draw: st.DrawFn, scope: str) -> str:
    """A concrete scope (no wildcards) that `scope` matches."""
    pattern = parse_scope(scope)
    if pattern.kind is not None:
        first = pattern.kind + draw(st.text("abc.", max_size=3))
        segments = [first, *draw(st.lists(concrete_segments, max_size=2))]
        action = [*pattern.action, *draw(st.lists(action_segments, max_size=2))]
        return "/".join(segments) + "#" + "/".join(action)
    segments = [draw(concrete_segments) if s == "*" else s for s in pattern.resource]
    if pattern.rest:
        segments += draw(st.lists(concrete_segments, min_size=0 if segments else 1, max_size=3))
    action = [*pattern.action, *draw(st.lists(action_segments, max_size=2))]
    return "/".join(segments) + "#" + "/".join(action)


@st.composite
def narrowings(draw: st.DrawFn, scope: str) -> str:
    """A scope that `scope` covers by construction (wildcards pinned, rest extended, action lengthened)."""
    pattern = parse_scope(scope)
    action = [*pattern.action, *draw(st.lists(action_segments, max_size=2))]
    if pattern.kind is not None:  # the same kind, or a resource of it (its first segment names the kind)
        if draw(st.booleans()):
            return f"{pattern.kind}**#" + "/".join(action)
        first = pattern.kind + draw(st.sampled_from(["", "src", "a.b", "*", "x*"]))
        more = draw(st.lists(resource_segments, max_size=2))
        return "/".join([first, *more, *(["**"] if draw(st.booleans()) else [])]) + "#" + "/".join(action)
    segments = [draw(resource_segments) if s == "*" else s for s in pattern.resource]
    rest = False
    if pattern.rest:
        segments += draw(st.lists(resource_segments, max_size=2))
        rest = draw(st.booleans())
    if not segments and not rest:
        segments = [draw(literal_segments)]
    return "/".join([*segments, *(["**"] if rest else [])]) + "#" + "/".join(action)


@st.composite
def rivals(draw: st.DrawFn, scope: str) -> str:
    """Any scope whose action `scope`'s covers: only the resources decide whether `scope` covers it
    (random scopes rarely pass the action test, so their resources would seldom be compared)."""
    other = draw(scopes())
    action = [*parse_scope(scope).action, *draw(st.lists(action_segments, max_size=1))]
    return other.split("#", 1)[0] + "#" + "/".join(action)


@st.composite
def widenings(draw: st.DrawFn, scope: str) -> tuple[str, str]:
    """(a wider scope, a concrete witness it matches that `scope` may not): callers assume the latter."""
    pattern = parse_scope(scope)
    if pattern.kind is not None:  # everything, or the same kind with a shorter action
        action = list(pattern.action)
        if len(action) > 1 and draw(st.booleans()):
            short = "/".join(action[: draw(st.integers(1, len(action) - 1))])
            return f"{pattern.kind}**#{short}", f"{pattern.kind}x#{short}"
        return "**#" + "/".join(action), f"{FRESH}#" + "/".join(action)
    segments = [FRESH if s == "*" else s for s in pattern.resource]
    action = list(pattern.action)
    literal = [i for i, s in enumerate(pattern.resource) if s != "*"]
    ops = ["everything", "open-rest"]
    if literal:
        ops.append("wildcard")
    if len(action) > 1:
        ops.append("shorter-action")
    op = draw(st.sampled_from(ops))
    wide_resource = list(pattern.resource)
    wide_rest = pattern.rest
    wide_action = action
    witness_segments = segments or [FRESH]
    if op == "everything":
        wide_resource, wide_rest = [], True
        witness_segments = [FRESH, *segments]
    elif op == "open-rest":
        if pattern.rest and pattern.resource:
            cut = draw(st.integers(0, len(pattern.resource) - 1))
            wide_resource = list(pattern.resource[:cut])
            witness_segments = segments[:cut] or [FRESH]
        else:
            witness_segments = [*segments, FRESH] if segments else [FRESH, FRESH]
        wide_rest = True
    elif op == "wildcard":
        index = draw(st.sampled_from(literal))
        wide_resource[index] = "*"
        witness_segments = list(segments) or [FRESH]
        witness_segments[index] = FRESH
    else:
        wide_action = action[: draw(st.integers(1, len(action) - 1))]
    wider = "/".join([*wide_resource, *(["**"] if wide_rest else [])]) + "#" + "/".join(wide_action)
    witness = "/".join(witness_segments) + "#" + "/".join(wide_action)
    return wider, witness


#: Constraint texts: words (so never blank), sometimes with stray spacing.
constraint_texts = st.builds(
    lambda words, pad: pad + " ".join(words) + pad,
    st.lists(st.text("abcdefghijXYZ", min_size=1, max_size=6), min_size=1, max_size=3),
    st.sampled_from(["", " ", "  "]),
)

#: Roles a chain below the ct_dev root may use (never its own role or its root delegator).
CHAIN_ROLES = ["tester", "reviewer", "documenter", "frontend_specialist"]


@st.composite
def chains(draw: st.DrawFn, min_depth: int = 0, max_depth: int = 3) -> list[dict[str, Any]]:
    """A sound chain of raw requests (root first) with structured scopes and constraints on every hop."""
    root = virtual_request()
    grant = draw(st.lists(scopes(), min_size=1, max_size=4, unique=True))
    root["cap_origin"]["scopes"] = grant
    root["delegation_context"]["scopes"] = list(grant)
    root["delegation_context"]["constraints"] = draw(
        st.lists(constraint_texts, min_size=1, max_size=4, unique_by=norm_text)
    )
    depth = draw(st.integers(min_depth, max_depth))
    roles = draw(st.permutations(CHAIN_ROLES))[:depth]
    requests = [root]
    for role in roles:
        requests.append(delegate(requests[-1], role))
    return requests


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every location inside a JSON value (keys and list indices), the value itself excluded."""
    items: Any = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["", " ", "2025-10-01T08:00:00", "2025-10-01T08:00:00Z", "**#x", "a#b"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)

MUTATIONS = ["drop", "retype", "shift-time", "bad-time", "unknown-key", "widen", "drop-constraint", "repeat"]


@st.composite
def mutated(draw: st.DrawFn, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The last request of `requests` with one to three random mutations applied."""
    request = copy.deepcopy(requests[-1])
    for kind in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        mutate(draw, request, requests, kind)
    return request


def mutate(draw: st.DrawFn, request: dict[str, Any], requests: list[dict[str, Any]], kind: str) -> None:
    locations = list(paths(request))
    ctx = request.get("delegation_context")
    ctx = ctx if isinstance(ctx, dict) else None
    if kind in {"drop", "retype"} and locations:
        where = draw(st.sampled_from(locations))
        parent = _at(request, where[:-1])
        if kind == "drop":
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(json_values)
    elif kind == "shift-time" and ctx is not None and isinstance(ctx.get("delegated_at"), str):
        seconds = draw(st.integers(-(10**8), 10**8))
        try:
            ctx["delegated_at"] = at(ctx["delegated_at"], timedelta(seconds=seconds))
        except Exception:  # an already mutated timestamp: replace it
            ctx["delegated_at"] = "2025-10-01T08:06:00Z"
    elif kind == "bad-time":
        section = draw(st.sampled_from(["original_task", "cap_origin", "delegation_context"]))
        field = {"original_task": "requested_at", "cap_origin": "granted_at"}.get(section, "expires_at")
        if isinstance(request.get(section), dict):
            request[section][field] = draw(
                st.sampled_from(["2025-10-01 08:00", "", "tomorrow", "2025-02-30T00:00:00Z"])
            )
    elif kind == "unknown-key":
        target = draw(st.sampled_from([request, ctx if ctx is not None else request]))
        target[draw(st.sampled_from(["delegated_too", "rolee", "scope", "extra"]))] = draw(json_values)
    elif kind == "widen" and ctx is not None and isinstance(ctx.get("scopes"), list) and ctx["scopes"]:
        index = draw(st.integers(0, len(ctx["scopes"]) - 1))
        if isinstance(ctx["scopes"][index], str):
            try:
                ctx["scopes"][index] = draw(widenings(ctx["scopes"][index]))[0]
            except ValueError:  # not a scope any more
                ctx["scopes"][index] = "**#fs"
    elif kind == "drop-constraint" and ctx is not None and isinstance(ctx.get("constraints"), list):
        if ctx["constraints"]:
            ctx["constraints"].pop(draw(st.integers(0, len(ctx["constraints"]) - 1)))
    elif kind == "repeat" and ctx is not None:
        earlier = ["project_manager", *(r["role"] for r in requests[:-1])]
        name = draw(st.sampled_from(earlier))
        request["role"] = ctx["delegated_to"] = name


def _at(value: Any, where: tuple[Any, ...]) -> Any:
    for key in where:
        value = value[key]
    return value
