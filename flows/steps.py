"""The few steps every stage flow shares: check inputs before any work, pick the images, run the shards with a
progress artifact per image, and finish with the round's figures and report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from flows.params import EvalSettings, StageParams, TrainSettings
from flows.progress import Report, flow_step
from stores import Store
from tasks.calibrate import CalibrationSettings, asks_precision, calibrate, check_calibration
from tasks.embed import embed
from tasks.ground_truth import load_ground_truth
from tasks.ingest import ingest
from tasks.models import check_model, resolve_version
from tasks.report import publish_report, record_round, stage_figures
from tasks.retrain import nothing_to_train_on, parent_trained_at, training_masks
from tasks.settings import EngineSettings
from tasks.shards import Shard, ShardSummary, plan_shards, shard_name
from tasks.stage import ShardTask
from tasks.thresholds import crop_layout


def open_store(url: str, must_exist: bool = True):
    """The Store at ``url``. With ``must_exist``, a store without an images table (a wrong path, a missing bucket)
    raises FileNotFoundError naming the URL, before any work starts, and no folder is created at ``url``."""
    store = Store(url, create=not must_exist)
    if must_exist and not store.fs.exists(store.path("images")):
        raise FileNotFoundError(
            f"store {url} does not exist or holds no images: check the URL, or ingest images first "
            "(sam-engine ingest, or the flow's `ingest` parameter)"
        )
    return store


def stage_crop_layout(params: StageParams) -> str:
    """The crop layout of the stage's generator (tasks.thresholds.crop_layout; "" for the whole image alone or
    a stage without one): the calibration its filters read."""
    autogen = getattr(params, "autogen", None)
    return crop_layout(autogen) if autogen is not None else ""


def check_inputs(params: StageParams, calibrating: CalibrationSettings | None = None):
    """Fail fast, before any work: the store exists (or images are to be ingested), the model version is
    registered and its checkpoint exists, the stage's annotator can be built, the ground-truth file it reads
    (the simulated annotator's) is readable, and a stage filter with a target precision finds the model's
    calibration (of the stage's crop layout; with ``calibrating``, a round measures a missing crop calibration
    itself before the stage: calibrate_stage_crops). Returns the parameters with ``latest`` resolved to a model
    version."""
    store = open_store(params.store, must_exist=not params.ingest)
    version = resolve_version(store, params.model_version)
    check_model(store, version)
    annotator = params.stage_annotator()
    if annotator is not None:
        annotator.build()  # a simulated annotator without ground truth, a Label Studio without a project...
        if annotator.ground_truth is not None:
            load_ground_truth(annotator.ground_truth)
    layout = stage_crop_layout(params)
    if not (layout and calibrating is not None):
        for name, settings in params.stage_filters().items():
            try:
                check_calibration(store, version, settings, layout=layout)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{name}.target_precision: {exc}") from None
    return params.model_copy(update={"model_version": version})


def calibrate_stage_crops(params: StageParams, calibration: CalibrationSettings | None) -> None:
    """A stage whose generator zooms into crops keeps masks by thresholds measured on the same crops: when its
    filters ask for a target precision and the store has no calibration of the stage's model for its crop
    layout, measure one on ``calibration``'s images (with the stage's grid, cleaning and crops) first. A rerun
    finds it and measures nothing."""
    layout = stage_crop_layout(params)
    if not layout or calibration is None or not asks_precision(*params.stage_filters().values()):
        return
    if open_store(params.store).has_calibration(params.model_version, layout):
        return
    with flow_step(f"calibrating {params.model_version} on the stage's crops: images") as report:
        calibrate(
            params.store, params.model_version, calibration.for_generator(params.autogen), on_progress=report
        )


def check_after_training(
    calibration: CalibrationSettings | None, evaluation: EvalSettings | None, train: TrainSettings | None
) -> None:
    """Fail fast, for what follows a stage: an evaluation that filters by a target precision needs the run to
    calibrate the version it evaluates, and the evaluation's, the calibration's and the replayed split's
    ground-truth files are readable."""
    if evaluation is not None and evaluation.filter is not None:
        if evaluation.filter.target_precision is not None and calibration is None:
            raise ValueError(
                "evaluation.filter.target_precision needs the version it evaluates calibrated: set `calibration`"
            )
        if evaluation.filter.target_precision is not None and evaluation.autogen is not None:
            wanted, measured = crop_layout(evaluation.autogen), crop_layout(calibration)
            if wanted != measured:
                raise ValueError(
                    f"evaluation.autogen looks at crop layout {wanted or 'none (the whole image)'} but "
                    f"`calibration` measures {measured or 'none (the whole image)'}: give both the same "
                    "crop_n_layers, crop_n_points_downscale_factor and crop_overlap_ratio"
                )
    for settings in (evaluation, calibration):
        if settings is not None:
            load_ground_truth(settings.ground_truth)
    if train is not None and train.replay_ground_truth:
        load_ground_truth(train.replay_ground_truth)


def ingest_and_select(params: StageParams) -> tuple[list[str], list[dict]]:
    """Register ``params.ingest`` (if any), then the ids of the images the stage works on.

    Returns (image ids, images skipped at ingest with their reasons).
    """
    skipped: list[dict] = []
    if params.ingest:
        with flow_step("ingesting files") as report:
            result = ingest(params.store, params.ingest, split=params.images.split, on_progress=report)
        skipped = result.skipped
    store = open_store(params.store)
    images = store.images()
    selection = params.images
    if selection.image_ids is not None:
        unknown = sorted(set(selection.image_ids) - set(images["image_id"]))
        if unknown:
            raise ValueError(f"images.image_ids not in store {params.store}: {unknown[:5]}")
        images = images[images["image_id"].isin(selection.image_ids)]
    else:
        images = images[images["split"] == selection.split]
    ids = sorted(images["image_id"])[selection.offset :]
    if selection.max_images is not None:
        ids = ids[: selection.max_images]
    if not ids:
        raise ValueError(f"no images selected in store {params.store} by {selection.model_dump()}")
    return ids, skipped


def run_embed(params: StageParams, image_ids: list[str]) -> tuple[list[str], list[dict]]:
    """Embed the images for the stage's model (cached ones are skipped).

    Returns (the image ids that have an embedding now, sorted; the images that failed, with their reasons).
    """
    with flow_step(f"embedding images with {params.model_version}") as report:
        result = embed(
            params.store, params.model_version, image_ids, **params.embed.model_dump(), on_progress=report
        )
    failed_ids = {f["image_id"] for f in result.failed}
    return sorted(set(image_ids) - failed_ids), result.failed


def run_shards(
    task: ShardTask, params: StageParams, stage: str, image_ids: list[str], **settings: BaseModel
) -> list[ShardSummary]:
    """Run ``task`` over the images shard by shard (sequentially: each shard already uses every core), with a
    progress artifact that the task moves after each image; ``settings`` are the stage's own (the task's
    keywords). Returns the shard summaries."""
    shards = plan_shards(image_ids, params.shard_size)
    images = sum(len(ids) for ids in shards)
    summaries = []
    device = EngineSettings.from_env().device
    with flow_step(f"round {params.round} {stage}: images") as report:
        done = 0
        for index, ids in enumerate(shards):
            shard = Shard(
                params.store, params.model_version, params.round, stage, shard_name(index), tuple(ids)
            )
            summaries.append(
                task(
                    shard,
                    device=device,
                    on_progress=_after(done, images, report),
                    **settings,
                )
            )
            done += len(ids)
    return summaries


def _after(before: int, total: int, report: Report) -> Report:
    """A shard's ``on_progress(images done in the shard, its images)`` as counts of the stage's images, of which
    ``before`` were done in the earlier shards."""
    return lambda done, _: report(before + done, total)


def finish_stage(
    params: StageParams, stage: str, summaries: list[dict], started: datetime, skipped: list[dict]
) -> dict:
    """The stage's figures (also written to the rounds table) and its report artifacts."""
    figures = stage_figures(Store(params.store), params.round, stage, summaries, params.model_version)
    if skipped:
        figures["skipped_images"] = skipped + figures["skipped_images"]
        figures["skipped"] = len(figures["skipped_images"])
    record_round(params.store, figures, started, datetime.now(UTC))
    publish_report(params.store, figures, params.overlay_images)
    return figures


def why_no_retrain(params, figures: dict) -> str | None:
    """Why a round's retrain would have nothing (new) to train on, or None when it has.

    A fully automatic stage on a model that predicts no confident mask keeps nothing; on a store with no earlier
    round the retrain would then fail after the stage's work is done, so the round skips it and says why. When
    earlier rounds left masks but none was added, edited or deleted since the parent version was trained, a
    retrain would learn the same masks again (only its training noise would change the model): the round skips
    it too.
    """
    store = Store(params.store)
    sources = params.retrain.sources
    kept = f"the {figures['stage']} stage kept {figures['masks']} masks in round {figures['round']}"
    masks = training_masks(store, params.round, sources)
    if masks.empty:
        return f"{kept}, and there are {nothing_to_train_on(store, params.round, sources)}"
    trained_at = parent_trained_at(store, params.model_version)
    if trained_at is None:
        return None
    # Every row that made the training set counts: an edit or a deletion writes a newer row (a tombstone for a
    # deletion), which the current masks alone would not show.
    history = training_masks(store, params.round, sources, current_only=False)
    if history["created_at"].max() <= trained_at:
        return (
            f"{kept}, and no mask of rounds <= {params.round} was added, edited or deleted since "
            f"{params.model_version} was trained ({trained_at:%Y-%m-%d %H:%M:%S} UTC): nothing new to learn"
        )
    return None


def now() -> datetime:
    return datetime.now(UTC)


def run_stage(
    params: StageParams,
    stage: str,
    task: ShardTask,
    check: Callable[[StageParams], None] | None = None,
    **settings: BaseModel,
) -> dict:
    """One stage, start to end: check the inputs (and ``check(params)``, the stage's own) before any work,
    ingest and select the images, embed them, run ``task`` over them shard by shard with the stage's
    ``settings`` (the task's keywords), and finish with the stage's figures, which it returns."""
    started = now()
    params = check_inputs(params)
    if check is not None:
        check(params)
    image_ids, skipped = ingest_and_select(params)
    image_ids, failed = run_embed(params, image_ids)
    summaries = run_shards(task, params, stage, image_ids, **settings)
    return finish_stage(params, stage, summaries, started, skipped + failed)
