"""The constitution file: its format, its defaults, its errors (which name the line) and its hash."""

from __future__ import annotations

import pytest

from gate import Constitution, ConstitutionError, default_constitution, load_constitution

EXAMPLE = """\
# delegation-ledger constitution
profile = "strict"
max_depth = 4
clock_skew_seconds = 30
max_ttl_seconds = 7200
allowed_roots = ["/srv/work", "/home/me/dev/../dev"]
allowed_models = ["claude-sonnet-*", "claude-opus-4"]

[default_budget]
max_tokens = 200000
max_cost_usd = 5

[roles.backend_specialist]
max_depth = 2
allowed_models = ["claude-sonnet-4"]
max_tokens = 100000
max_cost_usd = 2.0
max_ttl_seconds = 3600
"""


class TestLoading:
    def test_example_loads_and_normalises(self) -> None:
        """The documented example loads; roots are normalised and lists sorted."""
        rules = load_constitution(EXAMPLE, "example.toml")
        assert rules.profile == "strict"
        assert rules.strict
        assert rules.allowed_roots == ("/home/me/dev", "/srv/work")
        assert rules.allowed_models == ("claude-opus-4", "claude-sonnet-*")
        assert rules.default_budget is not None
        assert rules.default_budget.max_cost_usd == 5.0
        assert rules.roles["backend_specialist"].max_depth == 2

    def test_defaults(self) -> None:
        """An empty file is the built-in constitution: default profile, depth 3, 60 s skew, no roots."""
        rules = load_constitution("")
        assert rules == default_constitution()
        assert (rules.profile, rules.max_depth, rules.clock_skew_seconds) == ("default", 3, 60)
        assert rules.allowed_roots == ()
        assert rules.allowed_models == ()

    def test_role_policy_applies_overrides(self) -> None:
        """policy(role) is the global limits with that role's overrides; other roles get the globals."""
        rules = load_constitution(EXAMPLE)
        special = rules.policy("backend_specialist")
        assert (special.max_depth, special.allowed_models, special.max_ttl_seconds) == (
            2,
            ("claude-sonnet-4",),
            3600,
        )
        assert special.source("max_depth") == "[roles.backend_specialist] max_depth"
        other = rules.policy("tester")
        assert (other.max_depth, other.max_tokens, other.source("max_depth")) == (4, None, "max_depth")


class TestErrorsNameTheLine:
    @pytest.mark.parametrize(
        ("text", "line", "needle"),
        [
            ('profile = "default"\nmax_dept = 3\n', 2, "unknown key 'max_dept' at the top level"),
            ("max_depth = 3\n\nmax_depth = 4\n", 3, "not valid TOML"),
            ('max_depth = "three"\n', 1, "max_depth must be an integer (got 'three')"),
            ('profile = "paranoid"\n', 1, "profile must be one of 'default' or 'strict'"),
            ("max_depth = 11\n", 1, "max_depth must be <= 10"),
            ('allowed_roots = ["relative/path"]\n', 1, "absolute paths"),
            ('# comment\n[roles.tester]\nmax_depth = 1\nallowed_model = ["x"]\n', 4, "[roles.tester]"),
            ("[default_budget]\nmax_tokens = 0\n", 2, "default_budget.max_tokens must be >= 1"),
            ("default_budget = { max_tokens = 5, max_cost = 1 }\n", 1, "unknown key 'max_cost'"),
            ("max_depth = 3\nallowed_roots = [\n", 2, "not valid TOML"),
            ("clock_skew_seconds = 1.5\n", 1, "must be an integer"),
        ],
    )
    def test_error_names_source_line_and_reason(self, text: str, line: int, needle: str) -> None:
        """A broken constitution raises ConstitutionError naming the source, the line and the reason."""
        with pytest.raises(ConstitutionError) as caught:
            load_constitution(text, "rules.toml")
        error = caught.value
        assert error.line == line
        assert f"rules.toml, line {line}" in str(error)
        assert needle in str(error)
        assert f"{line} | " in error.diagnostics()

    def test_unknown_key_suggests_the_right_one(self) -> None:
        """A misspelt key gets a 'did you mean' hint."""
        with pytest.raises(ConstitutionError, match="did you mean 'max_depth'"):
            load_constitution("max_dept = 3\n")

    def test_every_problem_is_reported(self) -> None:
        """Several problems in one file are all reported, each with its line."""
        with pytest.raises(ConstitutionError) as caught:
            load_constitution('profile = "lax"\nmax_depth = -1\n[roles.x]\nmax_tokens = "many"\n', "c.toml")
        assert [p.line for p in caught.value.problems] == [1, 2, 4]

    def test_never_falls_back_to_defaults(self) -> None:
        """A broken file is an error, never the defaults."""
        with pytest.raises(ConstitutionError):
            load_constitution("max_depth = [3]\n")

    def test_bytes_are_a_type_error(self) -> None:
        """The loader takes text; the caller decodes the file."""
        with pytest.raises(TypeError):
            load_constitution(b"max_depth = 3")  # type: ignore[arg-type]


class TestRulesetHash:
    def test_hash_is_prefixed_sha256(self) -> None:
        """ruleset_hash is 'sha256:' and 64 hex digits."""
        digest = default_constitution().ruleset_hash
        assert digest.startswith("sha256:")
        assert len(digest) == 71
        int(digest[7:], 16)

    def test_hash_ignores_layout_order_comments_and_source(self) -> None:
        """Equivalent files (other order, spacing, comments, duplicates, source) share one hash."""
        a = load_constitution('allowed_roots = ["/b", "/a"]\nmax_depth = 3\n', "a.toml")
        b = load_constitution('# same rules\nmax_depth=3\nallowed_roots=["/a/", "/b", "/a"]\n', "b.toml")
        assert a.ruleset_hash == b.ruleset_hash

    def test_hash_changes_with_any_rule(self) -> None:
        """Changing any setting changes the hash."""
        base = default_constitution().ruleset_hash
        variants = [
            "max_depth = 2",
            'profile = "strict"',
            "clock_skew_seconds = 61",
            'allowed_roots = ["/x"]',
            "[roles.tester]\nmax_depth = 1",
            "[default_budget]\nmax_tokens = 5",
        ]
        hashes = {load_constitution(text).ruleset_hash for text in variants}
        assert base not in hashes
        assert len(hashes) == len(variants)

    def test_copy_recomputes_the_hash(self) -> None:
        """model_copy(update=...) validates again, so the hash always matches the fields."""
        rules = default_constitution()
        copied = rules.model_copy(update={"max_depth": 5})
        assert copied.max_depth == 5
        assert copied.ruleset_hash == Constitution(max_depth=5).ruleset_hash != rules.ruleset_hash

    def test_constitution_is_immutable(self) -> None:
        """A loaded constitution cannot be changed in place (its hash would lie)."""
        from pydantic import ValidationError

        with pytest.raises(ValidationError):
            default_constitution().max_depth = 9  # type: ignore[misc]
