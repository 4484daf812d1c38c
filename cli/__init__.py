"""The `ledger` command line: operators' and auditors' entry point, and the MCP server's launcher."""
