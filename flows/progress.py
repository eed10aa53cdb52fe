"""One progress bar for the CLI's long steps: a description, a bar, done/total and the time left, on stderr.

Tasks know their totals and report through a plain callback ``report(done, total)`` (they take
``on_progress``), so they stay free of rich and of the terminal; flows pass nothing. When stderr is not a terminal
(a pipe, a log file, CI) the bar is quiet: the callback does nothing and nothing is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

Report = Callable[[int, int], None]


def _quiet(done: int, total: int) -> None:
    pass


@contextmanager
def progress_bar(description: str, console: Console | None = None) -> Iterator[Report]:
    """Yields ``report(done, total)`` (counts of files, images or rounds) that moves a bar on ``console`` (default:
    stderr); quiet when that console is not a terminal. The bar disappears when the block ends."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield _quiet
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        yield report
