"""Where ledgers and keys live by default (platform conventions, never the current directory)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "delegation-ledger"


def default_db_path() -> Path:
    env = os.environ.get("LEDGER_DB")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP)) / "ledger.db"


def keys_dir() -> Path:
    env = os.environ.get("LEDGER_KEYS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir(APP)) / "keys"


def key_path_for(ledger_id: str) -> Path:
    """The private key of one ledger; its public key is the same path with `.pub`."""
    return keys_dir() / f"{ledger_id}.key"
