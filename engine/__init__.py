"""The engine: runs delegated work in real OpenCode servers."""
