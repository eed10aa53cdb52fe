"""Each stage flow runs on a tiny store, writes its masks and figures, and a second run changes nothing."""

import pytest

from flows.params import (
    AssistedManualParams,
    FullyAutomaticParams,
    ImageSelection,
    SemiAutomaticParams,
)
from tasks.annotate import AnnotatorSettings
from tasks.autogen import AutogenSettings
from tasks.filter import FilterSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")

# A random model rates nothing highly: open the filters so the automatic path produces masks to check.
OPEN_AUTOGEN = AutogenSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
OPEN_FILTER = FilterSettings(
    min_predicted_iou=0.0, min_stability_score=0.0, min_area=1, max_area_fraction=1.0
)


def _annotator(engine, **kw):
    return AnnotatorSettings(ground_truth=engine["ground_truth"], max_clicks=2, seconds_per_image=40.0, **kw)


def _params(kind, engine, **fields):
    """``kind`` (a stage's parameters) on the tiny engine: its store, model and images, embedded in process."""
    common = {
        "store": engine["store"],
        "model_version": engine["model"],
        "ingest": [engine["images"]],
        "embed": {"backend": "local"},
    }
    return kind(**{**common, **fields})


def _masks(store_url, **kw):
    from stores import Store

    cols = ["mask_id", "image_id", "counts", "source", "clicks", "seconds"]
    return Store(store_url).masks(**kw)[cols].sort_values("mask_id").reset_index(drop=True)


def test_assisted_manual_records_clicks_and_skips_the_corrupt_image(engine):
    from flows.assisted_manual import assisted_manual

    params = _params(
        AssistedManualParams, engine, shard_size=2, annotator=_annotator(engine), overlay_images=1
    )
    figures = assisted_manual(params)
    masks = _masks(engine["store"], round=1, stage="assisted_manual")
    assert figures["images"] == 3 and figures["masks"] == len(masks) > 0
    assert set(masks.source) == {"human"} and (masks.clicks >= 1).all() and (masks.seconds > 0).all()
    assert figures["clicks_per_mask"] == pytest.approx(masks.clicks.mean(), abs=1e-3)
    assert figures["skipped"] == 1 and "corrupt.png" in figures["skipped_images"][0]["uri"]
    from stores import Store

    rounds = Store(engine["store"]).rounds()
    assert list(rounds.stage) == ["assisted_manual"] and rounds.metrics[0]["skipped"] == 1

    again = assisted_manual(params)  # the same round twice: the same store contents
    assert again["masks"] == figures["masks"]
    assert _masks(engine["store"], round=1).equals(masks)


def test_fully_automatic_writes_auto_masks_idempotently(engine):
    from flows.fully_automatic import fully_automatic

    params = _params(FullyAutomaticParams, engine, round=3, autogen=OPEN_AUTOGEN, filter=OPEN_FILTER)
    first = fully_automatic(params)
    masks = _masks(engine["store"], round=3)
    assert first["masks"] == len(masks) > 0 and set(masks.source) == {"auto"}
    second = fully_automatic(params)
    assert second["masks"] == first["masks"] and _masks(engine["store"], round=3).equals(masks)


def test_semi_automatic_prefills_then_the_annotator_adds(engine):
    from flows.semi_automatic import semi_automatic

    params = _params(
        SemiAutomaticParams,
        engine,
        round=2,
        images=ImageSelection(max_images=2),
        autogen=OPEN_AUTOGEN,
        confident=OPEN_FILTER,
        annotator=_annotator(engine),
    )
    figures = semi_automatic(params)
    masks = _masks(engine["store"], round=2)
    assert figures["images"] == 2
    assert figures["masks_by_source"].get("model", 0) > 0
    assert set(masks.source) <= {"model", "human"}


def test_missing_store_or_model_fails_before_any_work(engine, tmp_path):
    from flows.fully_automatic import fully_automatic
    from stores import Store

    missing = (tmp_path / "no-such-store").as_uri()
    with pytest.raises(FileNotFoundError, match="no-such-store"):
        fully_automatic(FullyAutomaticParams(store=missing, model_version=engine["model"]))
    assert not (tmp_path / "no-such-store").exists()  # a mistyped store URL leaves no folder behind
    with pytest.raises(ValueError, match="unknown model_version 'nope'"):
        fully_automatic(_params(FullyAutomaticParams, engine, model_version="nope"))
    assert Store(engine["store"]).images().empty  # refused before ingesting anything

    from flows.assisted_manual import assisted_manual

    with pytest.raises(ValueError, match="ground_truth"):
        assisted_manual(_params(AssistedManualParams, engine))
    assert Store(engine["store"]).images().empty
    # the simulated annotator's ground-truth file is read before any image is ingested or embedded
    unreadable = _annotator(engine).model_copy(update={"ground_truth": str(tmp_path / "no-such-truth.json")})
    with pytest.raises(FileNotFoundError, match="no-such-truth.json"):
        assisted_manual(_params(AssistedManualParams, engine, annotator=unreadable))
    assert Store(engine["store"]).images().empty


def test_bad_parameters_are_refused_by_the_models():
    with pytest.raises(ValueError):
        FullyAutomaticParams(round=-1)
    with pytest.raises(ValueError):
        AnnotatorSettings(iou_target=1.5)


def test_each_run_names_the_annotator_and_the_calibrated_filters_of_its_own_stage():
    from flows.params import LabelStudioPushParams, RoundParams

    assert (
        AssistedManualParams().stage_filters() == {} and AssistedManualParams().stage_annotator() is not None
    )
    semi = SemiAutomaticParams()
    assert semi.stage_filters() == {"confident": semi.confident} and semi.stage_annotator() == semi.annotator
    auto = FullyAutomaticParams()
    assert auto.stage_filters() == {"filter": auto.filter} and auto.stage_annotator() is None
    # a round holds every stage's settings and uses only its own stage's
    assert RoundParams(stage="assisted_manual").stage_filters() == {}
    assert list(RoundParams(stage="semi_automatic").stage_filters()) == ["confident"]
    round3 = RoundParams(stage="fully_automatic")
    assert list(round3.stage_filters()) == ["filter"] and round3.stage_annotator() is None
    assert LabelStudioPushParams(stage="assisted_manual").stage_filters() == {}
    assert list(LabelStudioPushParams(stage="semi_automatic").stage_filters()) == ["confident"]


def test_a_fully_automatic_phrase_is_checked_before_a_run_and_unset_keeps_the_grid():
    from pydantic import ValidationError

    assert FullyAutomaticParams().text is None and FullyAutomaticParams().text_settings() is None
    for blank in ("", "  "):
        with pytest.raises(ValidationError, match="text"):
            FullyAutomaticParams(text=blank)
    params = FullyAutomaticParams(text=" every red ring ")
    assert params.text == "every red ring" and params.text_settings().phrase == "every red ring"
