"""Errors raised by the engine's bottom layer.

The tree::

    EngineError
    └── OpenCodeError                 anything about an `opencode serve` process or its HTTP API
        ├── OpenCodeStartError        no binary, the process died while starting, or it left a process behind
        ├── OpenCodeHTTPError         a non-2xx answer, or the request never got one (status None)
        └── OpenCodeTimeout           no answer, no "listening" line or no health in time

``httpx`` and ``subprocess`` errors are translated here, once, by ``engine.opencode_client`` and
``engine.opencode_runner`` (``raise OpenCodeHTTPError(...) from exc``); callers above the engine
never see them. Each error keeps its evidence and renders it with :meth:`EngineError.diagnostics`.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of every engine error."""

    def diagnostics(self) -> str:
        """A multi-line explanation for humans (a CLI prints it before exiting non-zero)."""
        return str(self)


class OpenCodeError(EngineError):
    """Something went wrong with an `opencode serve` process or its API."""


class OpenCodeStartError(OpenCodeError):
    """The server could not be found, started or stopped cleanly.

    ``returncode`` is the exit status when the process died; ``log_tail`` the end of its output.
    """

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail

    def diagnostics(self) -> str:
        lines = [str(self)]
        if self.returncode is not None:
            lines.append(f"exit status: {self.returncode}")
        if self.log_tail:
            lines.append("last output of opencode:")
            lines.extend("  " + line for line in self.log_tail.splitlines())
        return "\n".join(lines)


class OpenCodeHTTPError(OpenCodeError):
    """An API call failed: ``status`` is the HTTP status, or None when no answer came at all."""

    def __init__(
        self, method: str, path: str, status: int | None, body: Any = None, *, reason: str = ""
    ) -> None:
        got = f"HTTP {status}" if status is not None else f"no answer ({reason or 'transport error'})"
        super().__init__(f"OpenCode {method} {path} failed (got {got})")
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.reason = reason

    def diagnostics(self) -> str:
        body = f"\nresponse body: {self.body!r}" if self.body not in (None, "") else ""
        return f"{self}{body}"


class OpenCodeTimeout(OpenCodeError):
    """Waited ``seconds`` for ``what`` and it did not happen."""

    def __init__(self, what: str, seconds: float, *, log_tail: str = "") -> None:
        super().__init__(f"timed out after {seconds:g}s waiting for {what}")
        self.what = what
        self.seconds = seconds
        self.log_tail = log_tail

    def diagnostics(self) -> str:
        if not self.log_tail:
            return str(self)
        return f"{self}\nlast output of opencode:\n" + "\n".join("  " + x for x in self.log_tail.splitlines())
