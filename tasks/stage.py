"""What a stage task builds once before its first image, and the form every shard task takes.

annotate, prefill and autogen each work on one shard of images with the same things in hand: the store, the model
version's weights, the version whose stored embeddings that model reads (``tasks.models.embedding_version``),
the thresholds a filter with a target precision takes from the version's calibration, and the shard runner that
skips a shard already written and writes the shard's rows in one file (``tasks.shards.run_shard``).
``StageContext.open`` builds them once; a task then reads as: open the context, say what one image gives, run the
shard. The Label Studio push builds the same context for the confident masks it sends as predictions.

``ShardTask`` is the call ``flows.steps.run_shards`` makes of each of the three tasks; ``ShardSummary`` what each
returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypedDict

import numpy as np
import pandas as pd
from pydantic import BaseModel

from sam_core.sam import Sam
from stores import Store
from tasks.calibrate import calibrated_settings
from tasks.filter import FilterSettings
from tasks.models import cached_embedding, embedding_version, load_model
from tasks.progress import OnProgress
from tasks.shards import run_shard
from tasks.thresholds import GeneratorSettings


class ShardSummary(TypedDict):
    """What a shard task returns: its shard, the images it did, the masks it wrote, the images it skipped (each
    with its reason), and whether an earlier run had already written the shard."""

    shard: str
    images: int
    masks: int
    skipped: list[dict]
    resumed: bool


class PerImage(Protocol):
    """One image's work in a shard: the image's id and its images-table row -> its masks-table rows
    (tasks.records.mask_rows). May raise ValueError, KeyError or OSError to skip that image with the reason."""

    def __call__(self, image_id: str, image: pd.Series) -> pd.DataFrame: ...


class ShardTask(Protocol):
    """A stage's task over one shard of images (tasks.annotate.annotate, tasks.prefill.prefill,
    tasks.autogen.autogen), as flows.steps.run_shards calls it: the shard first, then the stage's own settings
    as keywords. ``on_progress(images done, images of the shard)`` after each image."""

    def __call__(
        self,
        store_url: str,
        model_version: str,
        image_ids: list[str],
        round: int,
        stage: str,
        shard: str,
        *,
        device: str = "cpu",
        on_progress: OnProgress | None = None,
        **settings: BaseModel,
    ) -> ShardSummary: ...


@dataclass(frozen=True)
class StageContext:
    """The store, the model and its embeddings' version, and where the masks go (round, stage), built once for a
    shard by :meth:`open`."""

    store: Store
    model_version: str
    model: Sam
    embeddings: str  # the version whose stored embeddings the model reads
    round: int
    stage: str

    @classmethod
    def open(
        cls, store: Store | str, model_version: str, round: int, stage: str, device: str = "cpu"
    ) -> StageContext:
        """The context of ``model_version`` (loaded on ``device``) in the store at ``store`` (a Store or its URL)."""
        store = store if isinstance(store, Store) else Store(store)
        return cls(
            store=store,
            model_version=model_version,
            model=load_model(store, model_version, device),
            embeddings=embedding_version(store, model_version),
            round=round,
            stage=stage,
        )

    def embedding(self, image_id: str) -> np.ndarray:
        """The image's stored C x H x W embedding for the model; KeyError naming the image when it has none."""
        return cached_embedding(self.store, image_id, self.model_version, self.embeddings)

    def calibrated(
        self, autogen: GeneratorSettings, filter: FilterSettings
    ) -> tuple[GeneratorSettings, FilterSettings]:
        """The generator and filter settings with a target precision turned into the model's calibrated
        thresholds (tasks.calibrate.calibrated_settings); both unchanged without one."""
        autogen, filter, _ = calibrated_settings(self.store, self.model_version, autogen, filter)
        return autogen, filter

    def run_shard(
        self,
        shard: str,
        image_ids: list[str],
        settings: dict,
        per_image: PerImage,
        on_progress: OnProgress | None = None,
    ) -> ShardSummary:
        """``per_image`` over the shard's images, their rows written as one shard of (round, stage); a shard
        already written by the same model with the same ``settings`` (JSON-able: what determines its masks) is
        skipped (tasks.shards.run_shard)."""
        return run_shard(
            self.store,
            round=self.round,
            stage=self.stage,
            shard=shard,
            image_ids=image_ids,
            model_version=self.model_version,
            settings=settings,
            per_image=per_image,
            on_progress=on_progress,
        )
