"""Exceptions the gate raises. A malformed *request* is never one of them: that is a rejected Verdict.

The tree::

    GateError                 base of everything below; `diagnostics()` is the text a CLI prints
    ├── ConstitutionError     the constitution text is not valid TOML or breaks its schema;
    │                         names the source, the line and the reason of every problem
    ├── RuleSetError          a Gate was composed from no rules, or from two rules sharing an id
    └── ContextError          the caller handed in an unusable ChainContext or a naive `now`
                              (a programming error of the engine, not bad input from an agent)
"""

from __future__ import annotations

from dataclasses import dataclass


class GateError(Exception):
    """Base of every exception raised by the gate package."""

    def diagnostics(self) -> str:
        """A human-readable explanation, printed by the CLI before it exits non-zero."""
        return str(self)


@dataclass(frozen=True)
class ConstitutionProblem:
    """One thing wrong with a constitution file, located by line (and column when TOML knows it)."""

    line: int
    reason: str
    column: int | None = None
    key: str | None = None

    def render(self, source: str) -> str:
        where = f"line {self.line}" if self.column is None else f"line {self.line}, column {self.column}"
        return f"{source}, {where}: {self.reason}"


class ConstitutionError(GateError):
    """The constitution could not be loaded; nothing falls back to defaults.

    `str(err)` names the source, the line and the reason of each problem, for example
    ``constitution.toml, line 3: unknown key 'max_dept' (did you mean 'max_depth'?)``.
    """

    def __init__(self, source: str, problems: list[ConstitutionProblem], text: str = "") -> None:
        if not problems:
            raise ValueError("ConstitutionError needs at least one problem")
        self.source = source
        self.problems: tuple[ConstitutionProblem, ...] = tuple(sorted(problems, key=lambda p: p.line))
        self._text = text
        super().__init__("\n".join(p.render(source) for p in self.problems))

    @property
    def line(self) -> int:
        """The line of the first problem."""
        return self.problems[0].line

    @property
    def reason(self) -> str:
        """The reason of the first problem."""
        return self.problems[0].reason

    def diagnostics(self) -> str:
        lines = self._text.splitlines()
        out = [f"invalid constitution {self.source}:"]
        for problem in self.problems:
            out.append(f"  {problem.render(self.source)}")
            if 1 <= problem.line <= len(lines):
                out.append(f"    {problem.line} | {lines[problem.line - 1]}")
        return "\n".join(out)


class RuleSetError(GateError):
    """A Gate cannot be composed from the rules given (none at all, or a repeated rule id)."""


class ContextError(GateError):
    """The engine handed the gate something unusable (not a ChainContext, a naive `now`, ...)."""
