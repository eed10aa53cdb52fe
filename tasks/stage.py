"""What a stage task builds once before its first image, and the form every shard task takes.

annotate, prefill and autogen each work on one ``tasks.shards.Shard`` of images with the same things in hand: the
store, the model version's weights, the version whose stored embeddings that model reads
(``tasks.models.embedding_version``), the thresholds a filter with a target precision takes from the version's
calibration, and the shard runner that skips a shard already written and writes the shard's rows in one file
(``tasks.shards.run_shard``). ``StageContext.open`` builds them once; a task then reads as: open the context, say
what one image gives, run the shard. The Label Studio push builds the same context for the confident masks it
sends as predictions.

``ShardTask`` is the call ``flows.steps.run_shards`` makes of each of the three tasks, and ``shard_task`` the
Prefect task they are declared as.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel

from sam_core.sam import Sam
from sam_core.text_encoder import TextEncoder
from stores import Store
from tasks.calibrate import calibrated_settings
from tasks.filter import FilterSettings
from tasks.models import cached_embedding, embedding_version, load_model, load_text_model
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.shards import Shard, ShardSummary, run_shard
from tasks.thresholds import GeneratorSettings


def shard_task(name: str):
    """Declare a stage's shard task: retried once (a shard already written is skipped, so a retry redoes only
    the unwritten one), its run named ``NAME-rROUND-STAGE-SHARD`` in the Prefect UI, cached on its inputs."""
    return task(
        name=name,
        retries=1,
        retry_delay_seconds=2,
        task_run_name=f"{name}-r{{shard.round}}-{{shard.stage}}-{{shard.name}}",
        cache_policy=CACHE_POLICY,
    )


class PerImage(Protocol):
    """One image's work in a shard: the image's id and its images-table row -> its masks-table rows
    (tasks.records.mask_rows). May raise ValueError, KeyError or OSError to skip that image with the reason."""

    def __call__(self, image_id: str, image: pd.Series) -> pd.DataFrame: ...


class ShardTask(Protocol):
    """A stage's task over one shard of images (tasks.annotate.annotate, tasks.prefill.prefill,
    tasks.autogen.autogen), as flows.steps.run_shards calls it: the shard, then the stage's own settings as
    keywords. ``on_progress(images done, images of the shard)`` after each image."""

    def __call__(
        self, shard: Shard, *, device: str = ..., on_progress: OnProgress | None = ..., **settings: BaseModel
    ) -> ShardSummary: ...


@dataclass(frozen=True)
class StageContext:
    """The shard, the store, the model and the version whose stored embeddings it reads, built once by
    :meth:`open`; for a text-prompted stage, the text encoder the model's text path was trained with."""

    shard: Shard
    store: Store
    model: Sam
    embeddings: str
    text_encoder: TextEncoder | None = None

    @classmethod
    def open(
        cls, shard: Shard, device: str = "cpu", store: Store | None = None, text: bool = False
    ) -> StageContext:
        """The context of ``shard``, its model loaded on ``device``; ``store``: the shard's store when the caller
        has it open already (with its storage options); ``text``: load the version as a text model, with its
        text encoder (ValueError naming the version's checkpoint when it has no text path)."""
        store = store or Store(shard.store_url)
        if text:
            model, text_encoder = load_text_model(store, shard.model_version, device)
        else:
            model, text_encoder = load_model(store, shard.model_version, device), None
        return cls(
            shard=shard,
            store=store,
            model=model,
            embeddings=embedding_version(store, shard.model_version),
            text_encoder=text_encoder,
        )

    @property
    def model_version(self) -> str:
        return self.shard.model_version

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
        settings: dict,
        per_image: PerImage,
        on_progress: OnProgress | None = None,
        notes: dict | None = None,
    ) -> ShardSummary:
        """``per_image`` over the shard's images, their rows written as one shard; a shard already written by the
        same model with the same ``settings`` (JSON-able: what determines its masks) is skipped
        (tasks.shards.run_shard). ``notes``: what per_image records beside the rows, added to the summary."""
        return run_shard(self.store, self.shard, settings, per_image, on_progress, notes)
