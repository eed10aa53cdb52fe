"""Stage 3 with crop layers, as the paper's ran: zoomed-in crops beside the whole image, and thresholds calibrated
on the same crops (a crop's masks rate otherwise than the whole image's)."""

import numpy as np
import pytest
from pydantic import ValidationError

from flows.params import EvalSettings, FullyAutomaticParams, RoundParams
from tasks.autogen import AutogenSettings
from tasks.calibrate import CalibrationSettings
from tasks.filter import FilterSettings
from tasks.thresholds import crop_layout

pytestmark = pytest.mark.usefixtures("prefect_harness")

CROPS = AutogenSettings(points_per_side=4, crop_n_layers=1)
LAYOUT = crop_layout(CROPS)
OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
OPEN_FILTER = FilterSettings(
    min_predicted_iou=0.0, min_stability_score=0.0, min_area=1, max_area_fraction=1.0
)
# By predicted IoU: the hand-made calibration tables below set where its threshold falls (tests/tasks/
# test_calibrate.py covers a quality model's).
CALIBRATED = FilterSettings(
    target_precision=0.5, match_iou=0.5, min_area=1, max_area_fraction=1.0, calibrate_quality=False
)


def _stage3(engine, **fields) -> FullyAutomaticParams:
    return _on_engine(FullyAutomaticParams, engine, **fields)


def _round3(engine, **fields) -> RoundParams:
    return _on_engine(RoundParams, engine, stage="fully_automatic", retrain=None, **fields)


def _on_engine(kind, engine, **fields):
    """Round 3's ``kind`` parameters over the engine's store, model and train images, embedded locally."""
    return kind(
        store=engine["store"],
        round=3,
        model_version=engine["model"],
        ingest=[engine["images"]],
        embed={"backend": "local"},
        **fields,
    )


def test_crop_layouts_name_the_crops_and_bad_crop_settings_are_refused():
    assert crop_layout(AutogenSettings()) == ""
    assert LAYOUT == "crops1-down1-overlap0.341"
    assert crop_layout(CROPS.model_copy(update={"crop_n_points_downscale_factor": 2})) != LAYOUT
    assert crop_layout(CalibrationSettings(ground_truth="gt.json").for_generator(CROPS)) == LAYOUT
    for field, value in (("crop_n_layers", 4), ("crop_n_layers", -1), ("crop_overlap_ratio", 1.0)):
        with pytest.raises(ValidationError, match=field):
            AutogenSettings(**{field: value})


def test_calibrations_of_two_crop_layouts_are_kept_apart(tmp_path, calibration_table):
    from stores import Store

    store = Store(str(tmp_path / "store"))
    whole = calibration_table([0.9] * 5, 0.0, 0.9)
    crops = calibration_table([0.1] * 7, 0.0, 0.9)
    store.write_calibration("r2", whole)
    assert not store.has_calibration("r2", LAYOUT)
    store.write_calibration("r2", crops, LAYOUT)
    assert len(store.calibration("r2")) == 5 and len(store.calibration("r2", LAYOUT)) == 7
    assert sorted(p.name for p in (tmp_path / "store" / "calibration").iterdir()) == [
        "r2.parquet",
        f"r2@{LAYOUT}.parquet",
    ]
    with pytest.raises(KeyError, match=f"no calibration for crop layout '{LAYOUT}'"):
        store.calibration("r3", LAYOUT)


def test_stage_3_with_crop_layers_writes_masks_found_in_the_crops(engine):
    from flows.fully_automatic import fully_automatic
    from stores import Store

    # the embedded model (a random one's masks touch every crop's edge, and the generator drops those) and no
    # NMS: both the whole image's masks and the crops' stay
    autogen = CROPS.model_copy(update={**OPEN, "crop_nms_thresh": 1.0, "box_nms_thresh": 1.0})
    params = _stage3(engine, autogen=autogen, filter=OPEN_FILTER.model_copy(update={"nms_iou": 1.0}))
    fully_automatic(params.model_copy(update={"model_version": "embedded"}))
    masks = Store(engine["store"]).masks(round=3)
    whole = (
        (masks.crop_box_x == 0)
        & (masks.crop_box_y == 0)
        & (masks.crop_box_w == 96)
        & (masks.crop_box_h == 96)
    )
    assert len(masks) > 0 and (~whole).any() and whole.any()


def test_a_round_calibrates_its_stage_on_the_crops_before_the_stage_and_only_once(engine):
    """The filter asks for a precision, the generator looks at crops and the model has no calibration of them: the
    round measures one on the calibration images with the stage's grid and crops; a rerun measures nothing."""
    from flows.data_engine_round import data_engine_round
    from stores import Store
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    calibration = CalibrationSettings(ground_truth=engine["ground_truth"], split="test", points_per_side=2)
    params = _round3(engine, autogen=CROPS, filter=CALIBRATED, calibration=calibration)
    data_engine_round(params, train_backend="local")
    store = Store(engine["store"])
    crops, whole = store.calibration(engine["model"], LAYOUT), store.calibration(engine["model"])
    # the stage's 4x4 grid on the whole image and on each of 4 crops, against the calibration's own 2x2
    assert len(crops) > 4 * len(whole) > 0
    path = store.path(*store._calibration_rel(engine["model"], LAYOUT))
    written = store.fs.info(path)["mtime"]
    data_engine_round(params, train_backend="local")
    assert store.fs.info(path)["mtime"] == written


def test_a_crop_stage_without_its_calibration_or_with_another_layouts_is_refused(engine, calibration_table):
    from flows.data_engine_round import data_engine_round
    from flows.fully_automatic import fully_automatic
    from stores import Store

    store = Store(engine["store"])
    store.write_calibration(engine["model"], calibration_table([0.9] * 20, 0.0, 0.9))  # not the crops'
    with pytest.raises(FileNotFoundError, match=f"no calibration for the crops of crop layout '{LAYOUT}'"):
        fully_automatic(_stage3(engine, autogen=CROPS, filter=CALIBRATED))
    with pytest.raises(FileNotFoundError, match=f"crop layout '{LAYOUT}'"):
        data_engine_round(_round3(engine, autogen=CROPS, filter=CALIBRATED), train_backend="local")
    calibration = CalibrationSettings(ground_truth=engine["ground_truth"], split="test", points_per_side=4)
    evaluation = EvalSettings(ground_truth=engine["ground_truth"], autogen=CROPS, filter=CALIBRATED)
    with pytest.raises(ValueError, match="evaluation.autogen looks at crop layout crops1"):
        data_engine_round(
            _round3(engine, filter=OPEN_FILTER, calibration=calibration, evaluation=evaluation),
            train_backend="local",
        )
    assert store.masks().empty  # every one refused before any work


def test_a_crop_stage_keeps_masks_by_its_crop_calibration_not_the_whole_images(engine, calibration_table):
    from flows.fully_automatic import fully_automatic
    from stores import Store
    from tasks.calibrate import calibrated_settings

    store = Store(engine["store"])
    # the whole image's calibration reaches the target nowhere; the crops' at a predicted IoU the random model's
    # masks straddle (as in tests/flows/test_round_and_resume.py)
    n = 40
    store.write_calibration(engine["model"], calibration_table([0.9] * n, 0.0, 0.1))
    right = np.where(np.arange(n) < 16, 0.9, 0.1)
    store.write_calibration(
        engine["model"], calibration_table(np.linspace(0.1, -0.05, n), 0.0, right), LAYOUT
    )
    point = calibrated_settings(store, engine["model"], CROPS, CALIBRATED)[2]
    assert point["feasible"] and 0.0 < point["pred_iou_thresh"] < 0.06
    fully_automatic(_stage3(engine, autogen=CROPS, filter=CALIBRATED))
    masks = store.masks(round=3)
    assert len(masks) > 0 and (masks.predicted_iou >= point["pred_iou_thresh"] - 1e-6).all()


def test_an_image_file_changed_after_ingest_is_skipped_with_the_reason_by_a_crop_stage(engine):
    """The crops are cut from the file itself (the cache holds whole-image embeddings only): a file whose size is
    no longer the store's is skipped, saying so, and the other images go on."""
    from PIL import Image

    from flows.fully_automatic import fully_automatic
    from stores import Store
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["images"]], split="train")
    uri = Store(engine["store"]).images().sort_values("image_id")["uri"].iloc[0]
    Image.new("RGB", (48, 40)).save(uri.removeprefix("file://"), format="PNG")
    params = _stage3(engine, autogen=CROPS.model_copy(update=OPEN), filter=OPEN_FILTER)
    figures = fully_automatic(params.model_copy(update={"ingest": None, "model_version": "embedded"}))
    (skipped,) = figures["skipped_images"]
    assert skipped["uri"] == uri and "is 40 x 48 px, but the store says 96 x 96" in skipped["reason"]
    assert figures["images"] == 2 and figures["masks"] > 0


def test_a_stage_with_a_quality_model_keeps_what_the_quality_threshold_keeps(engine, calibration_table):
    """With calibrate_quality (the default) the stage fits a quality model on its calibration and keeps the masks
    whose quality reaches the operating point's threshold, with NMS left to its filter: the stored masks are
    those, and only those, that rate at or above it."""
    from flows.fully_automatic import fully_automatic
    from stores import Store
    from tasks.calibrate import calibrated_settings

    store = Store(engine["store"])
    # The random model's masks straddle predicted IoU 0: the 16 highest-rated candidates are right (as in
    # test_a_crop_stage_keeps_masks_by_its_crop_calibration_not_the_whole_images), their sizes vary.
    n = 40
    table = calibration_table(np.linspace(0.1, -0.05, n), 0.0, np.where(np.arange(n) < 16, 0.9, 0.1))
    table["area"] = np.where(np.arange(n) % 2 == 0, 60, 200)
    store.write_calibration(engine["model"], table, LAYOUT)
    # No NMS: every mask the generator makes meets the quality bar (the random model's masks overlap).
    quality_filter = CALIBRATED.model_copy(update={"calibrate_quality": True, "nms_iou": 1.0})
    autogen, filter, point = calibrated_settings(store, engine["model"], CROPS, quality_filter)
    assert point["feasible"] and point["quality_model"] is not None and point["pred_iou_thresh"] is None
    assert autogen.box_nms_thresh == autogen.crop_nms_thresh == 1.0 and autogen.pred_iou_thresh == 0.0
    fully_automatic(_stage3(engine, autogen=CROPS, filter=quality_filter))
    masks = store.masks(round=3)
    quality = filter.quality.rate(masks.predicted_iou, masks.stability_score, masks.area, 96 * 96)
    assert len(masks) > 0 and (quality >= point["quality_thresh"] - 1e-9).all()
    # ... and the bar was met by some of the generator's masks, not all (the test could not fail otherwise).
    no_nms = {"box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}
    open_stage = _stage3(engine, autogen=CROPS.model_copy(update={**OPEN, **no_nms}), filter=OPEN_FILTER)
    fully_automatic(
        open_stage.model_copy(update={"round": 4, "filter": OPEN_FILTER.model_copy(update={"nms_iou": 1.0})})
    )
    assert len(store.masks(round=4)) > len(masks)
    # The evaluation's automatic masks are kept by the same point, and it reports that point's quality bar.
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest

    ingest.fn(engine["store"], [engine["test_images"]], split="test")
    metrics = evaluate.fn(
        engine["store"],
        engine["model"],
        ground_truth=engine["ground_truth"],
        max_images=1,
        max_clicks=1,
        autogen=CROPS,
        filter=quality_filter,
    )
    assert metrics["amg_quality_thresh"] == point["quality_thresh"] and metrics["amg_pred_iou_thresh"] is None
