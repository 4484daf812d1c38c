"""The `ledger` command line: operators' and auditors' entry point, and the MCP server's launcher."""

import os

# logfire installs a pydantic plugin (an entry point) that imports all of logfire as soon as the first
# model is built: ~0.3 s on every `ledger` command. Our telemetry uses logfire spans only, never that
# plugin, so the application turns it off unless the user chose otherwise.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "logfire-plugin")
