"""Fixtures shared by every test: no test may touch the user's real key folder.

Hypothesis profiles: "ci" (default, sized for the 2-core CI machine), "dev" (quick) and "thorough"
(many examples); choose one with HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ledger import Ledger

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def keys_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Signing keys of this test live in its own temporary folder (LEDGER_KEYS_DIR)."""
    path = tmp_path / "keys"
    monkeypatch.setenv("LEDGER_KEYS_DIR", str(path))
    return path


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh, initialised ledger (with its signing key) in a real SQLite file."""
    led = Ledger.init(tmp_path / "l.db")
    yield led
    led.close()
