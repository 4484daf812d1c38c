"""CLI fixtures: run `ledger` in-process (typer's runner) against a ledger in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app


class Run:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0) -> Any:
        result = self.runner.invoke(app, ["--db", str(self.db), *args], catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.output)
        return result

    def json(self, *args: str, code: int | None = 0) -> Any:
        return json.loads(self("--json", *args, code=code).stdout)


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Any]:
    return Run(tmp_path / "cli.db")
