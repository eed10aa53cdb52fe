"""Text autogen: the fully automatic stage prompted by a phrase ("every red ring") instead of a grid of points.

For each image of a shard: set its cached embedding (the encoder never runs again), ask the model for the phrase
alone, whose presence score says whether what the phrase names is in the image at all (SAM 3's split of
recognition from localisation). Where it is judged absent the image gets no mask, and the shard's summary names
the image with its presence score: an empty image is then an answer, not a failure. Where it is present, the
phrase's instances (``sam_core.text_instances.segment_phrase`` asked for instances: clicks inside the phrase's
mask, one mask per instance after non-maximum suppression) are written with ``source="auto"``, the phrase, and
the decoder's predicted IoU. The presence score is one number per image, not per mask: it lives in the summary, not the rows.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from sam_core.predictor import SamPredictor
from sam_core.text_encoder import check_phrase
from sam_core.text_instances import NMS_IOU, POINTS_PER_SIDE, PRESENCE_THRESHOLD, PhraseMasks, segment_phrase
from stores import Store
from tasks.ingest import load_image
from tasks.models import load_text_model
from tasks.progress import OnProgress
from tasks.records import mask_rows
from tasks.runlog import run_logger
from tasks.shards import Shard, ShardSummary
from tasks.stage import StageContext, shard_task


class TextAutogenSettings(BaseModel):
    """What a text-prompted automatic stage asks, and how it turns the answer into masks."""

    phrase: str = Field(..., min_length=1, description="what to find in every image, e.g. 'every red ring'")
    presence_threshold: float = Field(
        PRESENCE_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="presence probability below which the phrase counts as absent",
    )
    points_per_side: int = Field(
        POINTS_PER_SIDE, ge=1, le=64, description="grid of clicks (per side) tried inside the phrase's mask"
    )
    nms_iou: float = Field(NMS_IOU, ge=0.0, le=1.0, description="masks overlapping more are one instance")
    min_predicted_iou: float = Field(0.0, ge=0.0, le=1.0, description="instances rated lower are dropped")

    @field_validator("phrase")
    @classmethod
    def _a_phrase(cls, phrase: str) -> str:
        # empty, whitespace-only or not UTF-8: refused when the parameters are made, before any run starts
        return check_phrase(phrase)


def answer_phrase(predictor: SamPredictor, settings: TextAutogenSettings) -> PhraseMasks:
    """The instances of ``settings.phrase`` on the predictor's current image (a text model with its encoder):
    ``sam_core.text_instances.segment_phrase`` asked for instances whatever the phrase's first word, since the
    stage finds every one."""
    return segment_phrase(
        predictor,
        settings.phrase,
        presence_threshold=settings.presence_threshold,
        always_instances=True,
        min_predicted_iou=settings.min_predicted_iou,
        points_per_side=settings.points_per_side,
        nms_iou=settings.nms_iou,
    )


def check_text_round(store_url: str, model_version: str, round: int, stage: str, phrase: str) -> None:
    """Fail fast, before any image is embedded: ``model_version`` is a text model whose encoder reads ``phrase``
    (its words and context length), and the round's ``stage`` holds no masks of another prompt. One phrase per
    round and stage: the shards of a second phrase would be written under the same names and replace the first
    phrase's masks (a rerun of the same phrase resumes). ValueError naming what is wrong."""
    store = Store(store_url)
    _, encoder = load_text_model(store, model_version)
    encoder.tokenize([check_phrase(phrase, encoder.name)])
    earlier = store.masks(round=round, stage=stage, columns=["phrase"])["phrase"]
    others = sorted(set(earlier.dropna()) - {phrase})
    if others or earlier.isna().any():
        what = f"phrase {others[0]!r}" if others else "a grid of points (no phrase)"
        raise ValueError(
            f"round {round} {stage} already holds masks of {what}; one phrase per round and stage (a second "
            f"would replace them): give {phrase!r} another round"
        )


@shard_task("text-autogen")
def text_autogen(
    shard: Shard,
    settings: TextAutogenSettings,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> ShardSummary:
    """Find every instance of ``settings.phrase`` in one shard of images and write them (see the module docstring).
    The summary's ``absent`` lists the images the phrase was judged absent from, each with its presence score.
    ``on_progress(images done, images of the shard)`` is called after each image."""
    return run_text_shard(StageContext.open(shard, device, text=True), settings, on_progress)


def run_text_shard(
    ctx: StageContext, settings: TextAutogenSettings, on_progress: OnProgress | None = None
) -> ShardSummary:
    """The text shard over an open context (``ctx.model`` with its text path, ``ctx.text_encoder``)."""
    predictor = SamPredictor(ctx.model, text_encoder=ctx.text_encoder)
    predictor.encode_text(
        [settings.phrase]
    )  # a phrase this encoder cannot read fails the shard, not each image
    absent: list[dict] = []

    def per_image(image_id, image):
        size = (int(image["height"]), int(image["width"]))
        # A recognizer text model reads the pixels beside the stored embedding (sam_core.text_recognition).
        pixels = load_image(image["uri"]) if predictor.recognizes_text else None
        predictor.set_embedding(ctx.embedding(image_id), size, image=pixels)
        answer = answer_phrase(predictor, settings)
        if not answer.present:
            absent.append({"image_id": image_id, "presence": round(answer.presence, 4)})
        if answer.why_empty:
            run_logger().info("image %s: %s", image_id, answer.why_empty)
        return mask_rows(
            image_id,
            answer.masks,
            source="auto",
            model_version=ctx.model_version,
            predicted_iou=answer.scores,
            phrase=settings.phrase,
        )

    return ctx.run_shard({"text_autogen": settings.model_dump()}, per_image, on_progress, {"absent": absent})
