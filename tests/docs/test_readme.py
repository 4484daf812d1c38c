"""The README's Python snippet runs as written, and its two commands are the ones CI uses."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_python_snippet_runs() -> None:
    """Every ```python block of the README executes without error (it asserts its own results)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README shows the Python API"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_first_two_commands_are_demo_and_test() -> None:
    """The README's first commands run the demo and the tests, and .ci/run calls the test one."""
    commands = re.findall(r"^(bash \.ci/dev \w+)", README, re.M)
    assert commands[:2] == ["bash .ci/dev demo", "bash .ci/dev test"]
    assert "bash .ci/dev test" in (ROOT / ".ci" / "run").read_text()
