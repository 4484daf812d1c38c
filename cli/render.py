"""Output helpers: JSON for scripts, rich tables and progress for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engine.printable import printable, styled  # styled: the commands import it from here


class _Console(Console):
    """What is printed comes from the ledger, the user or an agent (a stream named "x[/]", a tool output
    holding "[conceal]..." or an ESC sequence) and is shown as it is: never read as rich markup or
    emoji codes (which would hide text or crash), control characters written as visible escapes
    (engine.printable: an agent cannot move the cursor over, erase or reorder what the operator
    reads). Styles are given as (text, style) parts, see `styled`. Soft wrap: a line is never broken
    by rich (a path or an id stays whole on its line; the terminal folds long lines)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(highlight=False, soft_wrap=True, markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:  # every str printed, table cells included
        return super().render_str(printable(text), **kwargs)


out = _Console()
err = _Console(stderr=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out.print(t)


def fail(message: str, code: int = 2) -> None:
    """Print a clear error on stderr and exit with `code` (2 bad input, 1 problem found)."""
    err.print(styled(("error:", "bold red"), f" {message}"))
    raise SystemExit(code)


@contextmanager
def progress(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only for people at a terminal); yields an `update(done)` callback."""
    if not enabled or not err.is_terminal:
        yield lambda _done: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)
