"""The CLI's progress bar: counts and time left on a terminal, nothing at all elsewhere."""

import io
import json
import sys

import pytest
from rich.console import Console
from rich.text import Text

from flows.progress import progress_bar
from sam_core.train import TrainConfig


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


def test_a_step_bar_names_the_step_and_counts_each_step_afresh():
    from flows.progress import step_bar

    console, out = _console(terminal=True)
    with step_bar(console) as show:
        show("embedding images: images", 4, 4)
        show("retraining r1: steps", 0, None)  # begun, its total not known yet
        show("retraining r1: steps", 2, 5)
    frames = [Text.from_ansi(frame).plain for frame in out.getvalue().split("\r")]
    last = [frame for frame in frames if "r1" in frame][-1]  # drawn as the bar stopped
    assert "retraining r1: steps" in last and "2/5" in last
    assert "embedding images: images" in out.getvalue()  # each step is drawn, however short
    console, out = _console(terminal=False)
    with step_bar(console) as show:
        show("retraining r1: steps", 2, 5)
    assert out.getvalue() == ""


def test_autogen_reports_each_image_and_a_shard_done_before_at_once(engine):
    from stores import Store
    from tasks.autogen import AutogenSettings, autogen
    from tasks.embed import embed
    from tasks.filter import FilterSettings
    from tasks.ingest import ingest
    from tasks.shards import Shard

    ingest.fn(engine["store"], [engine["images"]])
    embed.fn(engine["store"], engine["model"], backend="local")
    ids = sorted(Store(engine["store"]).images()["image_id"])
    shard = Shard(engine["store"], engine["model"], 3, "fully_automatic", "00000", tuple(ids))
    settings = (AutogenSettings(points_per_side=2), FilterSettings())
    calls, report = _recorder()
    autogen.fn(shard, *settings, on_progress=report)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls, report = _recorder()
    assert autogen.fn(shard, *settings, on_progress=report)["resumed"]
    assert calls == [(3, 3)]


def _human_masks(engine) -> None:
    """The train images with two ground-truth masks each as round 1's accepted masks: a retrain's data without
    running a stage."""
    import pandas as pd

    from stores import Store
    from tasks.ground_truth import load_ground_truth
    from tasks.ingest import ingest
    from tasks.records import mask_rows

    ingest.fn(engine["store"], [engine["images"]])
    store = Store(engine["store"])
    truth = load_ground_truth(engine["ground_truth"])
    rows = [
        mask_rows(
            image.image_id,
            truth.masks_for(image.uri)[:2],
            source="human",
            model_version=engine["model"],
        )
        for image in store.images().itertuples()
    ]
    store.write_masks(pd.concat(rows, ignore_index=True), round=1, stage="assisted_manual", shard="00000")


TINY_TRAINING = dict(steps=2, masks_per_image=2, correction_points=0, no_point_iterations=0)


def test_a_local_retrain_reports_each_step(engine):
    from tasks.retrain import retrain

    _human_masks(engine)
    calls, report = _recorder()
    recipe = TrainConfig(**TINY_TRAINING)
    retrain.fn(engine["store"], engine["model"], "r1", 1, recipe, backend="local", on_progress=report)
    assert calls == [(1, 2), (2, 2)]


def _latest_progress_artifacts() -> dict[str, float]:
    """{description: progress in percent} of the newest progress artifact of each description."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
        )
    latest = {}
    for artifact in artifacts:
        latest.setdefault(artifact.description, artifact.data)
    return latest


def _steps(calls) -> dict[str, list[tuple[int, int]]]:
    """A watcher's calls as {step: [(done, total), ...]}, without the (0, None) that says a step has begun."""
    steps: dict[str, list] = {}
    for step, done, total in calls:
        counts = steps.setdefault(step, [])
        if total is not None:
            counts.append((done, total))
    return steps


def test_a_round_reports_each_step_to_its_watchers_and_to_progress_artifacts(prefect_harness, engine):
    """The stage per image, the retrain per step, the evaluation per image: what `sam-engine round` and the demo
    show on their bar, and what the Prefect UI shows as progress artifacts."""
    from flows.data_engine_round import data_engine_round
    from flows.params import EvalSettings, RoundParams, TrainSettings
    from flows.progress import watching
    from tasks.autogen import AutogenSettings
    from tasks.filter import FilterSettings
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    params = RoundParams(
        store=engine["store"],
        round=1,
        stage="fully_automatic",
        model_version=engine["model"],
        ingest=[engine["images"]],
        embed={"backend": "local", "batch_size": 2},
        shard_size=2,
        autogen=AutogenSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        filter=FilterSettings(
            min_predicted_iou=0.0, min_stability_score=0.0, min_area=1, max_area_fraction=1.0
        ),
        retrain=TrainSettings(**TINY_TRAINING, cache_embeddings=True),
        new_model_version="r1",
        evaluation=EvalSettings(
            ground_truth=engine["ground_truth"], max_images=1, max_clicks=1, autogen=None
        ),
    )
    calls = []
    with watching(lambda step, done, total: calls.append((step, done, total))):
        data_engine_round(params, train_backend="local")
    steps = _steps(calls)
    assert list(steps) == [
        "ingesting files",
        f"embedding images with {engine['model']}",
        "round 1 fully_automatic: images",
        "retraining r1: steps",
        "evaluating r1: images",
    ]
    assert steps["ingesting files"][-1] == (4, 4)  # 3 scenes and the corrupt file
    assert steps[f"embedding images with {engine['model']}"] == [(2, 3), (3, 3)]
    assert steps["round 1 fully_automatic: images"] == [(1, 3), (2, 3), (3, 3)]  # per image, over 2 shards
    assert steps["retraining r1: steps"] == [(1, 2), (2, 2)]
    _counts_up_to_the_end(steps["evaluating r1: images"], 1)
    artifacts = _latest_progress_artifacts()
    for step in steps:
        assert artifacts[f"{step} done"] == 100.0


def test_the_retrain_flow_reports_each_step_to_its_watchers_and_to_a_progress_artifact(
    prefect_harness, engine
):
    from flows.params import RetrainParams, TrainSettings
    from flows.progress import watching
    from flows.retrain import retrain_flow

    _human_masks(engine)
    params = RetrainParams(
        store=engine["store"], round=1, model_version="r1", train=TrainSettings(**TINY_TRAINING)
    )
    calls = []
    with watching(lambda step, done, total: calls.append((step, done, total))):
        retrain_flow(params, backend="local")
    assert _steps(calls) == {"retraining r1: steps": [(1, 2), (2, 2)]}
    assert _latest_progress_artifacts()["retraining r1: steps done"] == 100.0


TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "120"}  # what rich takes for a terminal, 120 characters wide


def _drawn(printed: str) -> str:
    """Every frame a terminal was shown, as plain text (a bar is redrawn over itself after each "\\r")."""
    return "\n".join(Text.from_ansi(frame).plain for frame in printed.split("\r"))


def _flow_steps(*steps):
    """A stand-in for a flow that the CLI runs in-process: it reports ``steps`` [(name, total)] one count at a
    time, as the real flows' steps do, and returns what the CLI prints."""
    from flows.progress import watched_step

    def flow(params, **_):
        for name, total in steps:
            with watched_step(name) as report:
                for done in range(1, total + 1):
                    report(done, total)
        return {"model_version": "r1", "round": 1}

    return flow


@pytest.mark.parametrize(
    "command, flow",
    [
        (
            ["round", "--stage", "fully_automatic", "--round", "1"],
            "flows.cli.data_engine_round",
        ),
        (["train", "--round", "1"], "flows.cli.retrain_flow"),
    ],
)
def test_round_and_train_show_the_flows_steps_on_a_terminal_and_only_their_result_in_a_pipe(
    engine, monkeypatch, command, flow
):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setattr(
        flow, _flow_steps(("round 1 fully_automatic: images", 3), ("retraining r1: steps", 4))
    )
    args = [*command, "--store", engine["store"]]
    terminal = CliRunner().invoke(app, args, env=TERMINAL)
    assert terminal.exit_code == 0, terminal.output
    drawn = _drawn(terminal.stderr)
    assert "round 1 fully_automatic: images" in drawn and "retraining r1: steps" in drawn and "4/4" in drawn
    pipe = CliRunner().invoke(app, args)
    assert pipe.exit_code == 0, pipe.output
    assert pipe.stderr == "" and json.loads(pipe.stdout) == {"model_version": "r1", "round": 1}


def test_segment_shows_the_grid_points_decoded_on_a_terminal_only(engine, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    image = sorted((engine["root"] / "images").glob("train-*.png"))[0]
    out = tmp_path / "overlay.png"
    args = ["segment", str(image), "--out", str(out), "-m", engine["model"], "--points-per-side", "4"]
    args += ["--store", engine["store"]]
    terminal = CliRunner().invoke(app, args, env=TERMINAL)
    assert terminal.exit_code == 0, terminal.output
    drawn = _drawn(terminal.stderr)
    assert f"segmenting {image.name}: grid points" in drawn and "16/16" in drawn
    pipe = CliRunner().invoke(app, args)
    assert pipe.exit_code == 0, pipe.output
    assert pipe.stdout.endswith(f"masks -> {out}\n")
    assert pipe.stderr.startswith("no mask kept")  # why the random model kept nothing, and no bar


def test_round_passes_its_grid_thresholds_and_match_iou_to_the_flow(engine, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    seen = {}

    def flow(params, **_):
        seen["params"] = params
        return {"round": 1}

    monkeypatch.setattr("flows.cli.data_engine_round", flow)
    args = ["round", "--stage", "fully_automatic", "--round", "1", "--store", engine["store"]]
    args += ["--points-per-side", "8", "--pred-iou-thresh", "0.5", "--stability-thresh", "0.6"]
    args += ["--match-iou", "0.5", "--target-precision", "0.8", "--ground-truth", engine["ground_truth"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    params = seen["params"]
    assert params.autogen.points_per_side == 8 and params.calibration.points_per_side == 8
    assert (params.autogen.pred_iou_thresh, params.autogen.stability_score_thresh) == (0.5, 0.6)
    assert (params.filter.min_predicted_iou, params.filter.min_stability_score) == (0.5, 0.6)
    assert params.filter.match_iou == params.confident.match_iou == 0.5
    assert params.filter.target_precision == 0.8 and params.evaluation.autogen.points_per_side == 8


def test_record_terminal_runs_a_command_in_a_terminal_and_keeps_each_redraw_as_a_line(load_script, tmp_path):
    script = load_script("record_terminal")
    code = "import sys; print(sys.stdout.isatty()); print('a 1/2', end='\\r'); print('a 2/2'); sys.exit(3)"
    out = tmp_path / "rec"
    assert script.main(["--out", str(out), "--", sys.executable, "-c", code]) == 3
    lines = out.with_suffix(".txt").read_text().splitlines()
    assert lines[1].startswith("# exit code 3,")
    assert lines[2:] == ["True", "a 1/2", "a 2/2"]
    assert b"a 1/2\ra 2/2" in out.with_suffix(".ansi").read_bytes()
