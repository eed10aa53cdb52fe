"""Embed: run the image encoder over every image that has no embedding yet for a model version.

The heavy step of the engine (an image-encoder pass is ~450 GFLOPs for vit_h, the decoder ~0.1% of that), so it
runs on a Ray Data actor pool: each actor loads the model once, then reads, resizes, batches and encodes images
and writes each embedding straight to the store. Actors ask for ``num_gpus=1`` when the Ray cluster has GPUs and
run on CPU otherwise. Idempotent and resumable: images already embedded for the version are skipped, and each
embedding is its own atomic file, so a killed run loses at most the batch in flight.

``backend="local"`` runs the same encoder loop in this process (no Ray), for small jobs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prefect import task

from sam_core.transforms import ResizeLongestSide
from stores import Store
from tasks.ingest import load_image
from tasks.models import check_model, embedding_version, load_model
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.ray_cluster import cluster_gpus, ensure_ray
from tasks.runlog import run_logger


@dataclass
class EmbedResult:
    """embedded: image ids encoded now. skipped_existing: already cached. failed: [{"image_id", "uri", "reason"}]."""

    embedded: list[str] = field(default_factory=list)
    skipped_existing: int = 0
    failed: list[dict] = field(default_factory=list)


class ImageEncoderActor:
    """Ray Data callable class: ``__call__`` takes a batch {"image_id", "uri"} (numpy arrays of str) and returns
    {"image_id", "error"} ("" when the embedding was written)."""

    def __init__(
        self,
        store_url: str,
        model_version: str,
        device: str | None = None,
        dtype: str = "float32",
        storage_options: dict | None = None,
        torch_threads: int | None = None,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.store = Store(store_url, storage_options=storage_options)
        self.model_version = model_version
        # Written under the version that owns this model's image encoder (itself unless it kept another's).
        self.embeddings = embedding_version(self.store, model_version)
        self.dtype = dtype
        self.model = load_model(self.store, model_version, self.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        resize = ResizeLongestSide(self.model.image_encoder.img_size)
        ids, errors, inputs = [], [], []
        for image_id, uri in zip(batch["image_id"], batch["uri"], strict=True):
            ids.append(str(image_id))
            try:
                image = load_image(str(uri))
            except (OSError, ValueError) as exc:
                errors.append(str(exc) or type(exc).__name__)
                inputs.append(None)
                continue
            pixels = torch.from_numpy(np.ascontiguousarray(resize.apply_image(image))).to(self.device)
            inputs.append(self.model.preprocess(pixels.permute(2, 0, 1).float()))
            errors.append("")
        ready = [i for i, x in enumerate(inputs) if x is not None]
        if ready:
            with torch.inference_mode():
                embeddings = self.model.image_encoder(torch.stack([inputs[i] for i in ready]))
            for i, embedding in zip(ready, embeddings, strict=True):
                array = embedding.float().cpu().numpy()
                self.store.put_embedding(ids[i], self.embeddings, array, dtype=self.dtype)
        return {"image_id": np.asarray(ids, dtype=object), "error": np.asarray(errors, dtype=object)}


@task(name="embed", retries=1, retry_delay_seconds=5, cache_policy=CACHE_POLICY)
def embed(
    store_url: str,
    model_version: str,
    image_ids: list[str] | None = None,
    batch_size: int = 4,
    actors: int = 1,
    backend: str = "ray",
    dtype: str = "float32",
    on_progress: OnProgress | None = None,
) -> EmbedResult:
    """Encode the images (all of the store's, or ``image_ids``) that lack an embedding for ``model_version``.

    ``on_progress(images encoded, images to encode)`` is called after each batch, as the local encoder or Ray's
    actor pool hands it back (the CLI's progress bar).

    Embeddings go under ``tasks.models.embedding_version``: a version that kept another's image encoder (a
    decoder-only retrain) finds that version's embeddings already there and encodes nothing again."""
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', got {backend!r}")
    if batch_size < 1 or actors < 1:
        raise ValueError(f"batch_size and actors must be >= 1, got {batch_size} and {actors}")
    store = Store(store_url)
    check_model(store, model_version)
    images = store.images()
    if image_ids is not None:
        unknown = sorted(set(image_ids) - set(images["image_id"]))
        if unknown:
            raise ValueError(f"image ids not in the store's images table: {unknown[:5]}")
        images = images[images["image_id"].isin(image_ids)]
    done = store.embedded_image_ids(embedding_version(store, model_version))
    todo = images[~images["image_id"].isin(done)].sort_values("image_id")
    result = EmbedResult(skipped_existing=len(images) - len(todo))
    if todo.empty:
        return result
    logger = run_logger()
    logger.info("embedding %d images with %s (%s backend)", len(todo), model_version, backend)
    items = todo[["image_id", "uri"]].to_dict("records")
    if backend == "ray" and store.url.startswith("memory://"):
        # Ray actors live in other processes, which cannot see this process's memory filesystem.
        logger.warning("store %s is in memory: embedding in this process instead of on Ray", store.url)
        backend = "local"
    if backend == "local":
        encoder = ImageEncoderActor(
            store_url, model_version, dtype=dtype, storage_options=store.storage_options
        )
        outputs = []
        for chunk in _chunks(items, batch_size):
            outputs.append(
                encoder({"image_id": [r["image_id"] for r in chunk], "uri": [r["uri"] for r in chunk]})
            )
            if on_progress is not None:
                on_progress(sum(len(out["image_id"]) for out in outputs), len(items))
    else:
        outputs = _embed_on_ray(store, model_version, items, batch_size, actors, dtype, on_progress)
    uris = dict(zip(todo["image_id"], todo["uri"], strict=True))
    for out in outputs:
        for image_id, error in zip(out["image_id"], out["error"], strict=True):
            if error:
                result.failed.append({"image_id": image_id, "uri": uris[image_id], "reason": error})
            else:
                result.embedded.append(str(image_id))
    return result


def _embed_on_ray(store, model_version, items, batch_size, actors, dtype, on_progress=None) -> list[dict]:
    import ray

    ensure_ray()
    gpus = cluster_gpus()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    # Leave a CPU for Ray Data's read tasks: a pool that takes every CPU starves them and the job hangs.
    actors = max(1, min(actors, int(gpus) if gpus else max(1, int(cpus) - 1)))
    dataset = ray.data.from_items(items)
    encoded = dataset.map_batches(
        ImageEncoderActor,
        fn_constructor_kwargs={
            "store_url": store.url,
            "model_version": model_version,
            "dtype": dtype,
            "storage_options": store.storage_options,
            "torch_threads": None if gpus else _cpu_threads(int(cpus), actors),
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        num_gpus=1 if gpus else 0,
        num_cpus=1,
        batch_format="numpy",
    )
    outputs, encoded_count = [], 0
    # Ray Data streams: each batch arrives as soon as an actor has encoded it, so the count moves while they work.
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        outputs.append(batch)
        encoded_count += len(batch["image_id"])
        if on_progress is not None:
            on_progress(encoded_count, len(items))
    return outputs


def _cpu_threads(cpus: int, actors: int) -> int:
    """Torch threads per CPU actor: SAM_ENGINE_TORCH_THREADS when set, else the CPUs shared among the actors."""
    import os

    value = os.environ.get("SAM_ENGINE_TORCH_THREADS")
    return max(1, int(value)) if value else max(1, cpus // actors)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
