"""Progress of the long steps: a bar with done/total and the time left in the CLI, a progress artifact in Prefect.

Tasks know their totals and report through a plain callback ``report(done, total)`` (they take ``on_progress``),
so they stay free of rich, of Prefect's artifacts and of the terminal. Here those reports become something to see:

- ``progress_bar`` / ``step_bar``: the CLI's bar on stderr. When that is not a terminal (a pipe, a log file, CI)
  the bar is quiet: nothing is printed.
- ``flow_step``: a flow's long step. Its reports move a Prefect progress artifact and reach whatever is
  ``watching`` in this process: the CLI or the demo, which run flows in-process and show the same counts on
  their bar. ``watched_step`` is the same without the artifact, for a step run outside a flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tasks.progress import OnProgress

Report = OnProgress
# show(step, done, total): total is None while a step has begun and its total is not known yet.
Watcher = Callable[[str, int, int | None], None]

_WATCHERS: ContextVar[tuple[Watcher, ...]] = ContextVar("progress_watchers", default=())


def _quiet(*_) -> None:
    pass


@contextmanager
def step_bar(console: Console | None = None) -> Iterator[Watcher]:
    """Yields ``show(step, done, total)``: one bar on ``console`` (default: stderr) for a run of several steps.
    A new step names the bar and starts its count and its estimate of the time left afresh. Quiet when the
    console is not a terminal. The bar disappears when the block ends."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield _quiet
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar, current = None, None

        def show(step: str, done: int, total: int | None) -> None:
            nonlocal bar, current
            # A new step gets a bar of its own, drawn at once: a short step may end between two refreshes.
            if step != current:
                if bar is not None:
                    progress.remove_task(bar)
                bar, current = progress.add_task(step, total=total, completed=done), step
                progress.refresh()
            else:
                progress.update(bar, completed=done, total=total)

        yield show


@contextmanager
def progress_bar(description: str, console: Console | None = None) -> Iterator[Report]:
    """Yields ``report(done, total)`` (counts of files, images, grid points or training steps) that moves a bar
    named ``description`` on ``console`` (default: stderr); quiet when that console is not a terminal."""
    with step_bar(console) as show:
        show(description, 0, None)
        yield lambda done, total: show(description, done, total)


@contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """While the block runs, every ``flow_step`` / ``watched_step`` of this thread (the flows it runs included,
    which Prefect runs in the caller's thread) also reports to ``watcher``."""
    token = _WATCHERS.set((*_WATCHERS.get(), watcher))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


@contextmanager
def watched_step(step: str) -> Iterator[Report]:
    """Yields ``report(done, total)`` for one step, telling whatever is ``watching``; says the step has begun."""
    watchers = _WATCHERS.get()
    for watcher in watchers:
        watcher(step, 0, None)

    def report(done: int, total: int) -> None:
        for watcher in watchers:
            watcher(step, done, total)

    yield report


@contextmanager
def flow_step(step: str) -> Iterator[Report]:
    """For a long step of a running flow: yields ``report(done, total)`` that moves a Prefect progress artifact
    ("<step> done", in percent) and tells whatever is ``watching``. The artifact moves at whole percents only (at
    most a hundred API calls, however many images or training steps), and to 100 when the step ends, also for a
    step that reported nothing (all of it cached)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = create_progress_artifact(progress=0.0, description=f"{step} done")
    shown = 0

    def to_artifact(percent: int) -> None:
        nonlocal shown
        if percent > shown:
            update_progress_artifact(artifact, float(percent))
            shown = percent

    with watched_step(step) as tell:

        def report(done: int, total: int) -> None:
            to_artifact(math.floor(100 * done / total) if total else 0)
            tell(done, total)

        yield report
    to_artifact(100)
