"""The CLI's progress bar: counts and time left on a terminal, nothing at all elsewhere."""

import io

from rich.console import Console
from rich.text import Text

from flows.progress import progress_bar


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_a_terminal_sees_done_of_total_and_the_time_left():
    console, out = _console(terminal=True)
    with progress_bar("ingesting files", console) as report:
        report(3, 7)
    frames = [Text.from_ansi(frame).plain for frame in out.getvalue().split("\r")]
    last = [frame for frame in frames if "ingesting files" in frame][-1]  # drawn as the bar stopped
    assert "3/7" in last and "-:--:--" in last  # the time left, unknown this early


def test_no_terminal_no_bar():
    console, out = _console(terminal=False)
    with progress_bar("ingesting files", console) as report:
        report(3, 7)
    assert out.getvalue() == ""


def _recorder():
    calls = []
    return calls, lambda done, total: calls.append((done, total))


def _counts_up_to_the_end(calls, total):
    assert calls and calls[-1] == (total, total)
    assert all(t == total for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_the_long_tasks_report_each_file_or_image(engine):
    """ingest per file, local embed per image, eval and calibrate per image: what the CLI's bars show."""
    from tasks.autogen import AutogenSettings
    from tasks.calibrate import CalibrationSettings, calibrate
    from tasks.embed import embed
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest

    calls, report = _recorder()
    ingest.fn(engine["store"], [engine["images"]], on_progress=report)
    _counts_up_to_the_end(calls, 4)  # 3 scenes and the corrupt file
    ingest.fn(engine["store"], [engine["test_images"]], split="test")

    calls, report = _recorder()
    embed.fn(engine["store"], engine["model"], backend="local", batch_size=2, on_progress=report)
    assert calls == [(2, 5), (4, 5), (5, 5)]

    calls, report = _recorder()
    evaluate.fn(
        engine["store"],
        engine["model"],
        engine["ground_truth"],
        max_clicks=1,
        autogen=AutogenSettings(points_per_side=2),
        on_progress=report,
    )
    _counts_up_to_the_end(calls, 4)  # 2 test images, clicked and then segmented automatically

    calls, report = _recorder()
    settings = CalibrationSettings(ground_truth=engine["ground_truth"], split="test", points_per_side=2)
    calibrate.fn(engine["store"], engine["model"], settings, on_progress=report)
    assert calls == [(1, 2), (2, 2)]
