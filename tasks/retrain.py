"""Retrain: SAM's interactive training on every accepted mask so far, then a new model version in the registry.

The training set is each training-split image with its current masks (superseded and deleted ones dropped) of
the chosen sources from every round up to this one, plus (optionally) a replayed labelled split that the
parent learnt from. Training runs on Ray Train (``tasks.ray_train.train_on_ray``,
data-parallel, one GPU per worker where the cluster has GPUs) or, with ``backend="local"``, in this process
(``sam_core.train.train``). The checkpoint goes to ``<store>/checkpoints/<model_version>.pt``
(``Store.write_checkpoint``, atomic) and the models table gets the lineage: parent version, round, config, metrics.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence

from prefect import task

from sam_core.checkpoint import read_checkpoint
from sam_core.train import TrainConfig, train
from stores import Store
from tasks.ground_truth import evaluation_set
from tasks.ingest import load_image
from tasks.models import EMBEDDED_VERSION, check_model, register_model, resolve_version, shared_embeddings
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.ray_cluster import cluster_gpus, ensure_ray
from tasks.ray_train import train_on_ray
from tasks.records import decode_rows
from tasks.runlog import run_logger

TRAIN_SOURCES = ("human", "model", "auto")
"""The mask sources a retrain learns from unless told otherwise: every one."""


def training_masks(store, round: int, sources: list[str], split: str = "train", current_only: bool = True):
    """The current masks (a frame, possibly empty) of ``sources`` from rounds <= round on the split's images:
    what a retrain trains on, before any replayed split. ``current_only=False`` keeps every row that made them
    (superseded masks and deletions' tombstones too): their history."""
    masks = store.masks(source=list(sources), current_only=current_only)
    if len(masks):
        masks = masks[masks["round"].astype(int) <= int(round)]
    images = store.images()
    ids = images.loc[images["split"] == split, "image_id"]
    return masks[masks["image_id"].isin(ids)]


def parent_trained_at(store, model_version: str):
    """When ``model_version`` was registered (a pandas Timestamp, UTC), or None when it is not a version the
    store trained (the embedded model, or a registered checkpoint that was not retrained here)."""
    models = store.models()
    row = models[models["model_version"] == model_version]
    parent = None if row.empty else row.iloc[0]["parent_version"]
    if not isinstance(parent, str) or not parent:
        return None
    return row.iloc[0]["created_at"]


def changes_since_trained(
    store, model_version: str = "latest", sources: Sequence[str] = TRAIN_SOURCES
) -> tuple[int, int | None]:
    """(mask rows of ``sources`` written since ``model_version`` was trained: added, edited and deleted ones, all
    of them when it was not trained here; the highest round holding masks of ``sources``, None when none does).
    What a sync weighs a retrain by."""
    history = store.masks(source=list(sources), current_only=False)
    if history.empty:
        return 0, None
    trained_at = parent_trained_at(store, resolve_version(store, model_version))
    since = history if trained_at is None else history[history["created_at"] > trained_at]
    return len(since), int(history["round"].astype(int).max())


def nothing_to_train_on(store, round: int, sources: list[str], split: str = "train") -> str:
    """Why a retrain has no data: the words of training_set's error and of a round's skipped retrain."""
    return f"no {split!r} masks of sources {list(sources)} in rounds <= {round} in store {store.url}: nothing to train on"


def training_set(store, round: int, sources: list[str], split: str = "train") -> list[tuple]:
    """[(image HxWx3 uint8, masks list of HxW bool)] of the split's images with current masks of rounds <= round.

    Raises ValueError when there is nothing to train on.
    """
    masks = training_masks(store, round, sources, split)
    if masks.empty:
        raise ValueError(nothing_to_train_on(store, round, sources, split))
    images = store.images().set_index("image_id")
    out = []
    for image_id, group in masks.groupby("image_id", sort=True, observed=True):
        out.append((load_image(images.loc[image_id, "uri"]), decode_rows(group)))
    return out


def labelled_split(store, split: str, ground_truth: str) -> list[tuple]:
    """[(image HxWx3 uint8, masks list of HxW bool)] of the store's ``split`` images, with their masks from the
    COCO file ``ground_truth`` (a replayed set). ValueError when the split has no image with ground truth."""
    return [(image, masks) for _, image, masks in evaluation_set(store, ground_truth, split, None)]


def local_checkpoint(uri: str) -> tuple[str, str | None]:
    """A path other processes can read for ``uri``: memory:// checkpoints are copied to a temporary file.

    Returns (path, temporary file to delete or None).
    """
    if not uri.startswith("memory://"):
        return uri, None
    import fsspec

    with fsspec.open(uri, "rb") as f:
        data = f.read()
    handle, path = tempfile.mkstemp(suffix=".pt", prefix="sam_parent_")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return path, path


@task(name="retrain", retries=0, task_run_name="retrain-{model_version}", cache_policy=CACHE_POLICY)
def retrain(
    store_url: str,
    parent_version: str,
    model_version: str,
    round: int,
    recipe: TrainConfig | None = None,
    sources: Sequence[str] = TRAIN_SOURCES,
    workers: int = 1,
    replay_split: str | None = None,
    replay_ground_truth: str | None = None,
    backend: str = "ray",
    on_progress: OnProgress | None = None,
) -> dict:
    """Train ``model_version`` from ``parent_version`` on the store's masks with ``recipe`` (default: TrainConfig's
    defaults; its model, init_checkpoint, log_every and metadata are the task's to set); register and return its
    models row. ``workers``: Ray Train workers.

    ``on_progress(steps done, steps)`` is called after each training step in this process (``backend="local"``),
    or on Ray as rank 0's steps finish (polled from the workers, see tasks.ray_train.train_on_ray).

    ``replay_split``: also train on that split's images with their masks from the COCO file
    ``replay_ground_truth`` (a labelled set the parent learnt from), so that a round's few masks, which are the
    largest objects of each image, do not pull the model away from what it knew.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', got {backend!r}")
    if model_version == parent_version or model_version == EMBEDDED_VERSION:
        raise ValueError(f"model_version {model_version!r} must be new (parent is {parent_version!r})")
    store = Store(store_url)
    parent = check_model(store, parent_version)
    recipe = recipe or TrainConfig()
    dataset = training_set(store, round, sources or TRAIN_SOURCES)
    engine_images = len(dataset)
    if replay_split is not None:
        if not replay_ground_truth:
            raise ValueError(
                f"replay_split={replay_split!r} needs replay_ground_truth (a COCO file of its masks)"
            )
        dataset = dataset + labelled_split(store, replay_split, replay_ground_truth)
    logger = run_logger()
    logger.info(
        "retraining %s -> %s on %d images (%d replayed) (%s)",
        parent_version,
        model_version,
        len(dataset),
        len(dataset) - engine_images,
        backend,
    )
    init, temporary = local_checkpoint(parent["checkpoint_uri"])
    config = dataclasses.replace(
        recipe,
        model=parent["config"]["name"],
        init_checkpoint=init,
        log_every=0,
        metadata={"model_version": model_version, "parent_version": parent_version, "data_round": round},
    )
    try:
        checkpoint, metrics, extra = _train(
            config, dataset, workers, backend, parent_version, round, on_progress
        )
    finally:
        if temporary:
            os.remove(temporary)
    uri = store.write_checkpoint(model_version, checkpoint)
    config_dict = dataclasses.asdict(config)
    config_dict.pop("init_checkpoint", None)
    shared = None
    # A frozen encoder: the parent's embeddings still hold.
    if config.freeze_image_encoder or config.cache_embeddings:
        shared = shared_embeddings(store, parent_version, read_checkpoint(checkpoint)["model"])
    return register_model(
        store,
        model_version,
        parent["config"]["name"],
        uri,
        parent_version=parent_version,
        trained_on_round=round,
        metrics={
            **metrics,
            "train_images": engine_images,
            "replay_images": len(dataset) - engine_images,
            **extra,
        },
        extra_config={"train": config_dict, **({"embeddings_of": shared} if shared else {})},
    )


def _train(config, dataset, workers: int, backend: str, parent_version: str, round: int, on_progress=None):
    """(checkpoint bytes, final metrics, extra lineage) from Ray Train or an in-process run."""
    if backend == "local":
        import io

        import torch

        trainer = train(config, dataset, on_progress=on_progress)
        last = trainer.history[-1] if trainer.history else {}
        metrics = {"loss": last.get("loss"), "iou_last": last.get("iou_last"), "steps": trainer.step_index}
        buffer = io.BytesIO()
        torch.save(trainer.checkpoint(metrics), buffer)
        return buffer.getvalue(), metrics, {"backend": "local", "workers": 1}

    ensure_ray()
    gpus = cluster_gpus()
    result = train_on_ray(
        config,
        dataset,
        num_workers=workers,
        use_gpu=gpus >= workers,
        parent_version=parent_version,
        data_round=round,
        on_progress=on_progress,
    )
    extra = {"backend": "ray", "workers": workers, "wall_seconds": result["lineage"].get("wall_seconds")}
    return result["checkpoint_bytes"], dict(result["metrics"]), extra
