"""The seed model: where the data engine starts, as SAM started from a model trained on public datasets.

The seed is the tiny SAM with a pretrained image encoder taken from another version (as SAM's encoder started
from an MAE-pretrained ViT) and a prompt encoder and mask decoder trained briefly, by the interactive trainer, on
a small seed set: the store's images of one split (default ``seed``) with ground truth from a COCO file, which
the engine's rounds never annotate. Retrains may replay it (``retrain``'s ``replay_split``). With
``encoder_from=None`` the whole model is trained from scratch (slower to become useful).
"""

from __future__ import annotations

import io

from prefect import task

from tasks.progress import CACHE_POLICY, OnProgress
from tasks.runlog import run_logger


def labelled_split(store, split: str, ground_truth: str) -> list[tuple]:
    """[(image HxWx3 uint8, masks list of HxW bool)] of the store's ``split`` images, with their masks from the
    COCO file ``ground_truth``. ValueError when the split has no image with ground truth."""
    from tasks.evaluate import evaluation_set

    return [(image, masks) for _, image, masks in evaluation_set(store, ground_truth, split, None)]


def model_with_encoder(config_name: str, encoder_state: dict | None):
    """A fresh model of ``config_name`` (seeded: the same weights every time) whose image encoder holds
    ``encoder_state`` (an ``image_encoder`` state dict; None keeps it fresh too)."""
    import torch

    from sam_core.train import ATTENTION_INIT_GAIN, build_model

    torch.manual_seed(0)
    # The fresh decoder gets the location-aware attention init: with PyTorch's default init a briefly trained
    # decoder ignores where the click is (sam_core.train.locality_init).
    model = build_model(config_name, attention_init_gain=ATTENTION_INIT_GAIN)
    if encoder_state is not None:
        model.image_encoder.load_state_dict(encoder_state, strict=True)
    return model


def model_with_encoder_of(store, config_name: str, encoder_from: str | None):
    """A fresh model of ``config_name`` whose image encoder holds the weights of version ``encoder_from``."""
    from sam_core.embedded import read_checkpoint
    from tasks.models import model_row

    if encoder_from is None:
        return model_with_encoder(config_name, None)
    state = read_checkpoint(model_row(store, encoder_from)["checkpoint_uri"])["model"]
    encoder = {
        k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")
    }
    if not encoder:
        raise ValueError(f"model {encoder_from!r} has no image_encoder weights to start from")
    return model_with_encoder(config_name, encoder)


def seed_config_name(store, encoder_from: str | None) -> str:
    """The SAM config of a seed model: that of the version whose encoder it starts from (the embedded model's
    when it starts from scratch)."""
    from sam_core.embedded import embedded_config_name
    from tasks.models import model_row

    if encoder_from is None:
        return embedded_config_name()
    return str(model_row(store, encoder_from)["config"]["name"])


def seed_train_config(
    steps: int,
    *,
    config_name: str,
    masks_per_image: int,
    correction_points: int,
    no_point_iterations: int,
    lr: float,
    focal_weight: float,
    cache_embeddings: bool = True,
    seed: int = 0,
    metadata: dict | None = None,
):
    """The trainer's config for a seed model: a short run with a tenth of it warming up."""
    from sam_core.train import TrainConfig

    return TrainConfig(
        model=config_name,
        steps=steps,
        masks_per_image=masks_per_image,
        correction_points=correction_points,
        no_point_iterations=no_point_iterations,
        lr=lr,
        # 1:1 rather than the paper's 20:1: from a fresh decoder, 20:1 makes "predict nothing" a plateau
        # (sam_core/weights/MODEL_CARD.md).
        focal_weight=focal_weight,
        warmup_steps=max(1, steps // 10),
        cache_embeddings=cache_embeddings,
        seed=seed,
        log_every=0,
        metadata=metadata or {},
    )


@task(name="train-seed-model", cache_policy=CACHE_POLICY)
def train_seed_model(
    store_url: str,
    model_version: str,
    ground_truth: str,
    split: str = "seed",
    steps: int = 60,
    masks_per_image: int = 8,
    correction_points: int = 2,
    no_point_iterations: int = 1,
    lr: float = 1e-3,
    focal_weight: float = 1.0,
    encoder_from: str | None = "embedded",
    on_progress: OnProgress | None = None,
) -> dict:
    """Train and register the seed model ``model_version`` on the store's ``split`` images with their masks from
    the COCO file ``ground_truth`` (the seed set: a public dataset's part in the real engine); returns its models
    row. ``on_progress(steps done, steps)`` is called after each training step."""
    import torch

    from sam_core.train import train
    from stores import Store
    from stores.fsio import atomic_write
    from tasks.models import register_model, shared_embeddings

    store = Store(store_url)
    dataset = labelled_split(store, split, ground_truth)
    config_name = seed_config_name(store, encoder_from)
    model = model_with_encoder_of(store, config_name, encoder_from)
    config = seed_train_config(
        steps,
        config_name=config_name,
        masks_per_image=masks_per_image,
        correction_points=correction_points,
        no_point_iterations=no_point_iterations,
        lr=lr,
        focal_weight=focal_weight,
        cache_embeddings=encoder_from is not None,
        metadata={"model_version": model_version, "seed_set": f"{len(dataset)} {split!r} images"},
    )
    run_logger().info("training seed model %s: %d steps on %d images", model_version, steps, len(dataset))
    trainer = train(config, dataset, model=model, on_progress=on_progress)
    last = trainer.history[-1] if trainer.history else {}
    metrics = {"loss": last.get("loss"), "iou_last": last.get("iou_last"), "steps": trainer.step_index}
    buffer = io.BytesIO()
    torch.save(trainer.checkpoint(metrics), buffer)
    path = atomic_write(store.fs, store.path("checkpoints", f"{model_version}.pt"), buffer.getvalue())
    # The encoder, copied from encoder_from, stayed frozen (cached embeddings): its stored embeddings still hold.
    shared = shared_embeddings(store, encoder_from, trainer.model.state_dict()) if encoder_from else None
    return register_model(
        store,
        model_version,
        config_name,
        store.fs.unstrip_protocol(path),
        parent_version=encoder_from,
        metrics={**metrics, "seed_images": len(dataset), "encoder_from": encoder_from},
        extra_config={"embeddings_of": shared} if shared else None,
    )
