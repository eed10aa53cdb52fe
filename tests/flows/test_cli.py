"""The sam-engine CLI: help for every command, and ingest / query / segment / export on a tiny store."""

import json

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_every_command_has_help():
    for args in (
        [],
        ["demo"],
        ["ingest"],
        ["embed"],
        ["round"],
        ["train"],
        ["eval"],
        ["export", "coco"],
        ["export", "sa1b"],
        ["query", "masks"],
        ["segment"],
        ["model", "add"],
        ["calibrate"],
    ):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_ingest_query_segment_and_export(engine, tmp_path):
    store = ["--store", engine["store"]]
    result = runner.invoke(app, ["ingest", engine["images"], *store])
    assert result.exit_code == 0, result.output
    assert "3 images (3 new)" in result.output and "corrupt.png" in result.output

    result = runner.invoke(app, ["query", "images", *store])
    assert result.exit_code == 0 and "train" in result.output and "3" in result.output

    out = tmp_path / "overlay.png"
    image = sorted((engine["root"] / "images").glob("train-*.png"))[0]
    result = runner.invoke(
        app,
        ["segment", str(image), "--out", str(out), "-m", engine["model"], "--points-per-side", "4", *store],
    )
    assert result.exit_code == 0, result.output
    assert out.exists() and out.stat().st_size > 0
    # the thresholds are the user's: none keeps every candidate that NMS leaves, the highest keeps none and says why
    segment = ["segment", str(image), "--out", str(out), "-m", engine["model"], "--points-per-side", "4"]
    segment += store
    result = runner.invoke(app, [*segment, "--pred-iou-thresh", "0", "--stability-thresh", "0"])
    assert result.exit_code == 0 and not result.output.startswith("0 masks"), result.output
    result = runner.invoke(app, [*segment, "--pred-iou-thresh", "1"])
    assert result.exit_code == 0 and result.output.startswith("0 masks"), result.output
    assert "not above pred_iou_thresh 1.0" in result.output

    result = runner.invoke(app, ["export", "coco", str(tmp_path / "coco.json"), *store])
    assert result.exit_code == 0, result.output
    coco = json.loads(result.output)
    assert coco["masks"] == 0 and coco["files"] == [
        str(tmp_path / "coco.json")
    ]  # the store holds no masks yet
    result = runner.invoke(app, ["export", "sa1b", str(tmp_path / "sa1b"), *store])
    assert result.exit_code == 0, result.output
    sa1b = json.loads(result.output)
    assert sa1b["format"] == "sa1b" and sa1b["files"] == 0  # a count, one file an image
    result = runner.invoke(app, ["export", "yolo", str(tmp_path / "y"), *store])
    assert result.exit_code == 2 and "yolo" in result.output


def test_bad_input_gives_a_clear_error_not_a_traceback(engine):
    result = runner.invoke(app, ["embed", "-m", "nope", "--backend", "local", "--store", engine["store"]])
    assert result.exit_code == 2
    assert "unknown model_version 'nope'" in result.output


def test_calibrate_scores_a_version_and_prints_its_operating_points(engine):
    store = ["--store", engine["store"]]
    assert runner.invoke(app, ["ingest", engine["test_images"], "--split", "test", *store]).exit_code == 0
    args = ["calibrate", engine["ground_truth"], "-m", engine["model"], "--points-per-side", "4", *store]
    result = runner.invoke(app, [*args, "--split", "test", "--target-precision", "0.1", "--match-iou", "0.1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["images"] == 2 and summary["candidates"] > 0
    assert set(summary["operating_points"]) == {"0.1"}
    assert summary["precision_confidence"] == 0.95  # the bound the points hold at, unless told
    result = runner.invoke(app, [*args, "--split", "test", "--precision-confidence", "0.84"])
    assert result.exit_code == 0 and json.loads(result.output)["precision_confidence"] == 0.84
    result = runner.invoke(app, [*args, "--precision-confidence", "1.0"])
    assert result.exit_code == 2 and "precision-confidence" in result.output
    result = runner.invoke(app, [*args, "--split", "val"])  # no such images: a clear error, nothing written
    assert result.exit_code != 0 and "no 'val' images with ground truth" in result.output


def test_calibrate_cleans_the_candidates_as_min_region_area_says(engine):
    from stores import Store
    from tasks.calibrate import read_calibration

    store = ["--store", engine["store"]]
    assert runner.invoke(app, ["ingest", engine["test_images"], "--split", "test", *store]).exit_code == 0
    args = ["calibrate", engine["ground_truth"], "-m", engine["model"], "--points-per-side", "4", *store]
    areas = {}
    for px in ("0", "100000"):  # 100,000 px: every island of a 256 x 256 image is dropped, every hole filled
        result = runner.invoke(app, [*args, "--split", "test", "--min-region-area", px])
        assert result.exit_code == 0, result.output
        areas[px] = read_calibration(Store(engine["store"]), engine["model"])["area"].to_numpy()
    assert len(areas["0"]) == len(areas["100000"]) and (areas["0"] != areas["100000"]).any()
    bad = runner.invoke(app, [*args, "--split", "test", "--min-region-area", "-1"])
    assert bad.exit_code == 2 and "--min-region-area" in bad.output


def test_calibrate_with_crop_layers_keeps_the_crops_calibration_apart(engine):
    from stores import Store
    from tasks.calibrate import read_calibration

    store = ["--store", engine["store"]]
    assert runner.invoke(app, ["ingest", engine["test_images"], "--split", "test", *store]).exit_code == 0
    args = [
        "calibrate",
        engine["ground_truth"],
        "-m",
        engine["model"],
        "--points-per-side",
        "4",
        "--split",
        "test",
    ]
    result = runner.invoke(app, [*args, "--crop-layers", "1", *store])
    assert result.exit_code == 0, result.output
    opened = Store(engine["store"])
    assert len(read_calibration(opened, engine["model"], "crops1-down1-overlap0.341")) > 0
    assert not opened.has_calibration(engine["model"])  # the whole image's is another calibration
    bad = runner.invoke(app, [*args, "--crop-layers", "4", *store])
    assert bad.exit_code == 2 and "--crop-layers" in bad.output
