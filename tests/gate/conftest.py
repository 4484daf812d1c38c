"""Fixtures of the gate tests: a real project folder under tmp_path, which is the allowed root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gate import ChainContext, Constitution, load_constitution
from tests.gate.gate_builders import context, facts_for, load_fixture


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An existing project folder inside the allowed root."""
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def default_rules(tmp_path: Path) -> Constitution:
    """The default profile with tmp_path as the only allowed root."""
    return load_constitution(f"allowed_roots = [{json.dumps(str(tmp_path))}]\n", "default.toml")


@pytest.fixture
def strict_rules(tmp_path: Path) -> Constitution:
    """The strict profile with tmp_path as the only allowed root."""
    text = f'profile = "strict"\nallowed_roots = [{json.dumps(str(tmp_path))}]\n'
    return load_constitution(text, "strict.toml")


@pytest.fixture
def fixture_request(project: Path) -> dict[str, Any]:
    """The ct_dev payload, pointed at the allowed project folder."""
    return load_fixture(project)


@pytest.fixture
def root_chain(project: Path) -> ChainContext:
    """The context of a root delegation into the project folder."""
    return context(directory=facts_for(project))
