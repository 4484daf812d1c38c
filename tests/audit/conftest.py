"""Fixtures of the audit tests: one real chain for the whole folder, reports built from it, the CLI."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from audit_support import TASK, Chain, Cli, build_chain

import gate
from engine.audit import build_report, seal
from ledger import Ledger


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """The real chain of audit_support, built once (about a minute of real OpenCode agents)."""
    return build_chain(tmp_path_factory.mktemp("audit-chain"))


@pytest.fixture
def chain_keys(chain: Chain, keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Chain:
    """The chain, with its signing key in force (the autouse keys_dir points elsewhere)."""
    monkeypatch.setenv("LEDGER_KEYS_DIR", str(chain.keys))
    return chain


@pytest.fixture
def rules(chain: Chain) -> gate.Constitution:
    """The rules the chain ran under (the current rules of most tests)."""
    return gate.load_constitution(chain.constitution.read_text(), source=str(chain.constitution))


@pytest.fixture
def envelope(chain_keys: Chain, rules: gate.Constitution) -> dict[str, Any]:
    """The sealed report of TASK, current rules = the recorded ones."""
    with Ledger.open(chain_keys.db, create=False) as led:
        return seal(build_report(led, TASK, current=rules, current_source=str(chain_keys.constitution)))


@pytest.fixture
def report(envelope: dict[str, Any]) -> dict[str, Any]:
    return envelope["report"]  # type: ignore[no-any-return]


@pytest.fixture
def cli(chain_keys: Chain) -> Cli:
    return Cli(chain_keys.db)


@pytest.fixture
def hops() -> Callable[[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every hop of a report's tree by session id."""

    def collect(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        stack = list(report["tree"])
        while stack:
            hop = stack.pop()
            out[hop["session_id"]] = hop
            stack.extend(hop["children"])
        return out

    return collect
