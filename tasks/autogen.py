"""Autogen: the fully automatic stage's mask generation, from cached image embeddings.

For each image of a shard: fetch its embedding for the model version from the store (the encoder never runs
again), prompt the mask decoder with a regular grid of points (``AutomaticMaskGenerator.generate_from_embedding``:
batched decoding, predicted-IoU and stability filters, box NMS, small-region cleanup), apply the stage's filter,
and write the shard's masks as one atomic file with ``source="auto"``.

With crop layers (``crop_n_layers`` > 0, as the paper's stage 3 ran: overlapping zoomed-in crops beside the whole
image), the image itself is read and every crop is encoded in the task: the cache holds whole-image embeddings
only. Small objects then meet the decoder at two or more times their size.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from sam_core import defaults
from sam_core.automatic_mask_generator import AutomaticMaskGenerator
from tasks.filter import FilterSettings, filter_records, keeps_nothing, why_none_kept, why_nothing
from tasks.ingest import load_image
from tasks.progress import OnProgress
from tasks.records import mask_rows
from tasks.runlog import run_logger
from tasks.shards import Shard, ShardSummary
from tasks.stage import StageContext, shard_task
from tasks.thresholds import CROP_DEFAULTS, CropLayers, CropOverlap, CropPointsDownscale


class AutogenSettings(BaseModel):
    """Automatic mask generator settings (the reference's names and meanings)."""

    points_per_side: int = Field(
        defaults.POINTS_PER_SIDE, ge=1, le=128, description="grid points per side of the image"
    )
    points_per_batch: int = Field(
        defaults.POINTS_PER_BATCH, ge=1, le=1024, description="prompts decoded together"
    )
    pred_iou_thresh: float = Field(defaults.PRED_IOU_THRESH, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(defaults.STABILITY_SCORE_THRESH, ge=0.0, le=1.0)
    stability_score_offset: float = Field(defaults.STABILITY_SCORE_OFFSET, gt=0.0)
    box_nms_thresh: float = Field(defaults.BOX_NMS_THRESH, ge=0.0, le=1.0)
    min_mask_region_area: int = Field(0, ge=0, description="fill holes / drop islands smaller than this (px)")
    crop_n_layers: CropLayers = CROP_DEFAULTS["crop_n_layers"]
    crop_n_points_downscale_factor: CropPointsDownscale = CROP_DEFAULTS["crop_n_points_downscale_factor"]
    crop_overlap_ratio: CropOverlap = CROP_DEFAULTS["crop_overlap_ratio"]
    crop_nms_thresh: float = Field(
        defaults.CROP_NMS_THRESH, ge=0.0, le=1.0, description="box NMS across crops (smaller crops win)"
    )


def make_generator(model, settings: AutogenSettings | dict):
    """An ``AutomaticMaskGenerator`` over ``model`` with ``settings`` (a dict is validated first), RLE output."""
    settings = AutogenSettings.model_validate(settings)
    return AutomaticMaskGenerator(model, output_mode="coco_rle", **settings.model_dump())


def generate_records(ctx: StageContext, generator, image_id: str, image) -> list[dict]:
    """AMG records of one image (``image``: its images-table row, with height, width and uri) from its cached
    embedding; KeyError (naming the image) if it was not embedded. A generator with crop layers reads the image
    instead and encodes the whole image and every crop (one encoder pass more than the cache would save: the
    masks are then exactly the reference generator's); ValueError when the file's size is not the store's."""
    size = (int(image["height"]), int(image["width"]))
    if generator.crop_n_layers > 0:
        pixels = load_image(image["uri"])
        if pixels.shape[:2] != size:
            raise ValueError(
                f"image {image_id} at {image['uri']} is {pixels.shape[0]} x {pixels.shape[1]} px, but the store "
                f"says {size[0]} x {size[1]}: the file changed after ingest"
            )
        return generator.generate(pixels)
    return generator.generate_from_embedding(ctx.embedding(image_id), size)


def records_to_rows(records: list[dict], image_id: str, *, source, model_version, annotator=None):
    """Masks-table rows from AMG records (coco_rle output mode)."""
    return mask_rows(
        image_id,
        [r["segmentation"] for r in records],
        source=source,
        model_version=model_version,
        predicted_iou=[r["predicted_iou"] for r in records],
        stability_score=[r["stability_score"] for r in records],
        point_coords=[r["point_coords"] for r in records],
        crop_box=[r["crop_box"] for r in records],
        annotator=annotator,
    )


@shard_task("autogen")
def autogen(
    shard: Shard,
    settings: AutogenSettings,
    filter: FilterSettings,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> ShardSummary:
    """Generate, filter and write the automatic masks of one shard of images (see the module docstring).
    ``on_progress(images done, images of the shard)`` is called after each image (a grid of decoder passes).
    """
    ctx = StageContext.open(shard, device)
    settings, filter = ctx.calibrated(settings, filter)
    generator = make_generator(ctx.model, settings)

    def per_image(image_id, image):
        if keeps_nothing(filter):
            run_logger().info("image %s: %s", image_id, why_nothing(filter, shard.model_version))
            return records_to_rows([], image_id, source="auto", model_version=shard.model_version)
        size = (int(image["height"]), int(image["width"]))
        records = generate_records(ctx, generator, image_id, image)
        kept = filter_records(records, size, filter)
        if not kept:
            # an empty result says why: the bar that removed every mask, and the best value against it
            why = (
                generator.funnel.why_empty(settings.pred_iou_thresh, settings.stability_score_thresh)
                if not records
                else why_none_kept(records, size, filter)
            )
            run_logger().info("image %s: %s", image_id, why)
        return records_to_rows(kept, image_id, source="auto", model_version=shard.model_version)

    settings_used = {"autogen": settings.model_dump(), "filter": filter.model_dump()}
    return ctx.run_shard(settings_used, per_image, on_progress)
