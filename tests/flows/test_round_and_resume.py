"""A data-engine round retrains and evaluates; a run that dies in the middle of autogen resumes to the same masks."""

import pytest

from flows.params import EvalSettings, FullyAutomaticParams, RoundParams, TrainSettings
from tasks.autogen import AutogenSettings
from tasks.filter import FilterSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")

OPEN_AUTOGEN = AutogenSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
OPEN_FILTER = FilterSettings(
    min_predicted_iou=0.0, min_stability_score=0.0, min_area=1, max_area_fraction=1.0
)


def _round_one(engine, **fields) -> RoundParams:
    """Round 1 of the fully automatic stage on the engine's images, retrained into r1; ``fields`` do the rest."""
    return RoundParams(
        store=engine["store"],
        round=1,
        stage="fully_automatic",
        model_version=engine["model"],
        ingest=[engine["images"]],
        embed={"backend": "local"},
        new_model_version="r1",
        **fields,
    )


def test_round_runs_the_stage_then_retrains_and_evaluates(engine):
    from flows.data_engine_round import data_engine_round
    from stores import Store
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    params = _round_one(
        engine,
        autogen=OPEN_AUTOGEN,
        filter=OPEN_FILTER,
        retrain=TrainSettings(steps=1, masks_per_image=2, cache_embeddings=True, correction_points=1),
        evaluation=EvalSettings(
            ground_truth=engine["ground_truth"], max_images=1, max_clicks=2, autogen=OPEN_AUTOGEN
        ),
    )
    figures = data_engine_round(params, train_backend="local")
    store = Store(engine["store"])
    models = store.models().set_index("model_version")
    assert models.loc["r1", "parent_version"] == engine["model"]
    assert models.loc["r1", "trained_on_round"] == 1
    assert figures["new_model_version"] == "r1" and figures["evaluated_model_version"] == "r1"
    assert "retrain_skipped" not in figures
    assert 0.0 <= figures["miou@1"] <= 1.0 and "amg_recall" in figures
    row = store.rounds().iloc[0]
    assert row["stage"] == "fully_automatic" and row["metrics"]["new_model_version"] == "r1"
    assert "miou@1" in row["metrics"]

    # the retrain flow (what the labels-synced trigger starts) continues from the newest version
    from flows.params import RetrainParams
    from flows.retrain import retrain_flow

    retrained = retrain_flow(
        RetrainParams(
            store=engine["store"],
            round=1,
            train=TrainSettings(steps=1, masks_per_image=2, cache_embeddings=True),
        ),
        backend="local",
    )
    assert retrained["model_version"] == "r1-r1" and retrained["parent_version"] == "r1"

    # a round whose stage adds nothing, on a parent trained after every mask there is: no retrain on old masks
    quiet = params.model_copy(
        update={
            "round": 2,
            "model_version": "r1-r1",
            "new_model_version": "r2",
            "filter": OPEN_FILTER.model_copy(update={"min_predicted_iou": 1.0}),
            "evaluation": None,
        }
    )
    figures = data_engine_round(quiet, train_backend="local")
    assert figures["masks"] == 0 and "new_model_version" not in figures
    assert figures["retrain_skipped"].startswith(
        "the fully_automatic stage kept 0 masks in round 2, and no mask of rounds <= 2 was added, edited or "
        "deleted since r1-r1 was trained ("
    )
    assert figures["retrain_skipped"].endswith("UTC): nothing new to learn")
    assert "r2" not in set(Store(engine["store"]).models()["model_version"])
    # a deletion after r1-r1 was trained changes its training set: then the retrain is not skipped
    from flows.steps import why_no_retrain

    deleted = store.masks(round=1)["mask_id"].iloc[0]
    store.delete_masks([deleted], round=2, stage="fully_automatic", shard="review")
    assert why_no_retrain(quiet, figures) is None


def test_a_round_that_kept_nothing_skips_its_retrain_and_says_why(engine):
    """A fully automatic round whose filter keeps no mask, on a store with no earlier masks, skips its retrain
    instead of failing with "nothing to train on" after the stage's work, records why, and still evaluates the
    model it started from."""
    from flows.data_engine_round import data_engine_round
    from stores import Store
    from tasks.ingest import ingest
    from tasks.report import stage_markdown

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    params = _round_one(
        engine,
        autogen=OPEN_AUTOGEN,
        filter=OPEN_FILTER.model_copy(update={"min_predicted_iou": 1.0}),
        retrain=TrainSettings(steps=1, masks_per_image=2, cache_embeddings=True, correction_points=1),
        evaluation=EvalSettings(ground_truth=engine["ground_truth"], max_images=1, max_clicks=1),
    )
    figures = data_engine_round(params, train_backend="local")
    assert figures["masks"] == 0
    assert figures["retrain_skipped"] == (
        "the fully_automatic stage kept 0 masks in round 1, and there are no 'train' masks of sources "
        f"['human', 'model', 'auto'] in rounds <= 1 in store {engine['store']}: nothing to train on"
    )
    assert "new_model_version" not in figures
    assert figures["evaluated_model_version"] == engine["model"] and "miou@1" in figures
    store = Store(engine["store"])
    assert "r1" not in set(store.models()["model_version"])
    assert store.rounds().iloc[0]["metrics"]["retrain_skipped"] == figures["retrain_skipped"]
    assert f"**Retrain skipped**: {figures['retrain_skipped']}" in stage_markdown(engine["store"], figures, 0)


def _auto_params(store_url, engine):
    return FullyAutomaticParams(
        store=store_url,
        round=4,
        model_version=engine["model"],
        ingest=[engine["images"]],
        shard_size=1,
        autogen=OPEN_AUTOGEN,
        filter=OPEN_FILTER,
        embed={"backend": "local"},
    )


def _mask_set(store_url):
    from stores import Store

    masks = Store(store_url).masks(round=4)
    return sorted(zip(masks.mask_id, masks.image_id, masks.counts, strict=True))


def test_a_run_killed_mid_autogen_resumes_to_the_same_masks(engine, monkeypatch):
    import tasks.autogen
    from flows.fully_automatic import fully_automatic
    from stores import Store
    from tasks.models import register_model

    real = tasks.autogen.generate_records
    calls = []

    def dies_on_the_second_image(*args, **kwargs):
        calls.append(args[2])
        if len(set(calls)) >= 2:
            raise RuntimeError("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.autogen, "generate_records", dies_on_the_second_image)
    with pytest.raises(RuntimeError, match="worker killed"):
        fully_automatic(_auto_params(engine["store"], engine))
    partial = _mask_set(engine["store"])
    assert partial and len({image for _, image, _ in partial}) == 1  # the first shard made it to the store

    monkeypatch.setattr(tasks.autogen, "generate_records", real)
    fully_automatic(_auto_params(engine["store"], engine))
    state = Store(engine["store"]).read_state("stage_shards")
    assert len(state) == 3

    clean = (engine["root"] / "clean-store").as_uri()
    register_model(Store(clean), engine["model"], "tiny", str(engine["root"] / "tiny.pt"))
    fully_automatic(_auto_params(clean, engine))
    assert _mask_set(engine["store"]) == _mask_set(clean)


def test_calibrated_filters_and_a_replayed_split(engine, calibration_table):
    """A filter with a target precision takes its thresholds from the model's calibration (and refuses to start
    without one); the round calibrates the version it trains, and the retrain replays a labelled split."""
    import numpy as np

    from flows.data_engine_round import data_engine_round
    from stores import Store
    from tasks.calibrate import CalibrationSettings, calibrated_settings, read_calibration
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    calibrated = FilterSettings(
        target_precision=0.5, match_iou=0.5, min_area=1, max_area_fraction=1.0, calibrate_quality=False
    )  # by predicted IoU: the hand-made calibration below sets where its threshold falls
    calibration = CalibrationSettings(ground_truth=engine["ground_truth"], split="test", points_per_side=4)
    params = _round_one(
        engine,
        autogen=AutogenSettings(points_per_side=4),
        filter=calibrated,
        retrain=TrainSettings(
            steps=2,
            masks_per_image=2,
            cache_embeddings=True,
            correction_points=1,
            replay_split="test",
            replay_ground_truth=engine["ground_truth"],
        ),
        calibration=calibration,
        evaluation=EvalSettings(
            ground_truth=engine["ground_truth"],
            max_images=1,
            max_clicks=2,
            autogen=AutogenSettings(points_per_side=4),
            filter=calibrated,
        ),
    )
    match = "filter.target_precision: model 'tiny-random' has no calibration"
    with pytest.raises(FileNotFoundError, match=match):
        data_engine_round(params, train_backend="local")
    with pytest.raises(ValueError, match="set `calibration`"):
        data_engine_round(
            params.model_copy(update={"calibration": None, "filter": OPEN_FILTER}), train_backend="local"
        )
    store = Store(engine["store"])
    assert store.masks().empty  # both refused before any work

    # A random model's masks match nothing, so its calibration is made by hand: 16 distinct right masks rated
    # highest, then wrong ones; the operating point lands inside the random model's predicted-IoU range.
    n = 40
    store.write_calibration(
        engine["model"],
        calibration_table(np.linspace(0.1, -0.05, n), 0.0, np.where(np.arange(n) < 16, 0.9, 0.1)),
    )
    point = calibrated_settings(store, engine["model"], params.autogen, calibrated)[2]
    assert point["feasible"] and 0.0 < point["pred_iou_thresh"] < 0.06
    figures = data_engine_round(params, train_backend="local")
    masks = store.masks(round=1)
    assert len(masks) == figures["masks"] > 0
    assert (masks.predicted_iou >= point["pred_iou_thresh"] - 1e-6).all()
    assert len(read_calibration(store, "r1")) > 0  # the new version was calibrated for the next round
    assert "amg_pred_iou_thresh" in figures and 0.0 <= figures["amg_precision"] <= 1.0
    row = store.models().set_index("model_version").loc["r1"]
    assert row["metrics"]["replay_images"] == 2 and row["metrics"]["train_images"] == 3


def test_the_evaluation_scores_automatic_masks_on_its_first_amg_max_images(engine):
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    common = dict(ground_truth=engine["ground_truth"], max_images=2, max_clicks=1, autogen=OPEN_AUTOGEN)
    every = evaluate.fn(engine["store"], engine["model"], **common)
    first = evaluate.fn(engine["store"], engine["model"], amg_max_images=1, **common)
    assert every["eval_images"] == first["eval_images"] == 2 and every["amg_images"] == 2
    assert first["amg_images"] == 1
    # the interactive part still sees every image
    assert first["eval_masks"] == every["eval_masks"] and first["miou@1"] == every["miou@1"]


def test_the_evaluation_scores_at_most_max_masks_per_image_by_clicks(engine):
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    common = dict(ground_truth=engine["ground_truth"], max_images=2, max_clicks=1, autogen=None)
    every = evaluate.fn(engine["store"], engine["model"], **common)
    capped = evaluate.fn(engine["store"], engine["model"], max_masks_per_image=1, **common)
    assert every["eval_masks"] > capped["eval_masks"] == capped["eval_images"] == 2


def test_an_unreachable_operating_point_skips_the_generator_and_says_why(
    engine, monkeypatch, caplog, calibration_table
):
    """Where the calibration found no thresholds at the target precision nothing can be kept, so the evaluation
    and the stages decode no grid (about 2 s an image on 2 cores), score precision and recall 0, and say why."""
    import logging

    import numpy as np

    from flows.fully_automatic import fully_automatic
    from sam_core.automatic_mask_generator import AutomaticMaskGenerator
    from stores import Store
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest

    store = Store(engine["store"])
    # every candidate wrong: no operating point at any precision
    store.write_calibration(engine["model"], calibration_table(np.linspace(0.9, 0.1, 20), 0.99, 0.1))

    def never(*args, **kwargs):
        raise AssertionError("the generator ran for an operating point that keeps nothing")

    monkeypatch.setattr(AutomaticMaskGenerator, "generate", never)
    monkeypatch.setattr(AutomaticMaskGenerator, "generate_from_embedding", never)
    calibrated = FilterSettings(target_precision=0.8, match_iou=0.5, min_area=1)
    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    metrics = evaluate.fn(
        engine["store"],
        engine["model"],
        ground_truth=engine["ground_truth"],
        max_images=2,
        max_clicks=1,
        autogen=OPEN_AUTOGEN,
        filter=calibrated,
    )
    assert metrics["amg_images"] == 2 and metrics["amg_recall"] == metrics["amg_precision"] == 0.0
    assert metrics["amg_pred_iou_thresh"] is None and metrics["miou@1"] > 0.0  # the clicks were still scored

    # Stage 2's pre-fill: no rows, and the generator never asked
    from types import SimpleNamespace

    from tasks.calibrate import calibrated_settings
    from tasks.prefill import confident_rows

    _, unreachable, _ = calibrated_settings(store, engine["model"], OPEN_AUTOGEN, calibrated)
    ctx = SimpleNamespace(model_version=engine["model"])
    assert confident_rows(
        ctx,
        AutomaticMaskGenerator.__new__(AutomaticMaskGenerator),
        "x",
        {"height": 96, "width": 96},
        unreachable,
    ).empty

    with caplog.at_level(logging.INFO):
        fully_automatic(_auto_params(engine["store"], engine).model_copy(update={"filter": calibrated}))
    assert store.masks(round=4).empty
    assert f"the calibration of {engine['model']} found no thresholds" in caplog.text
