"""Prefill: the semi-automatic stage. Confident automatic masks first, then the annotator adds what is missing.

As in the SAM paper's second stage: the model's confident masks are placed on the image without a person
looking (``source="model"``), and the annotator is asked only for the objects they do not cover
(``source="human"``), which shifts the annotators' time to the less prominent objects and raises the number of
masks per image. Both kinds are written in one atomic shard.
"""

from __future__ import annotations

import pandas as pd

from sam_core.predictor import SamPredictor
from tasks.annotate import AnnotatorSettings, annotated_rows, annotation_request
from tasks.autogen import AutogenSettings, generate_records, make_generator, records_to_rows
from tasks.filter import FilterSettings, filter_records, keeps_nothing
from tasks.ground_truth import load_ground_truth
from tasks.progress import OnProgress
from tasks.records import decode_mask
from tasks.shards import Shard, ShardSummary
from tasks.stage import StageContext, shard_task


def confident_rows(
    ctx: StageContext, generator, image_id: str, image, confident: FilterSettings
) -> pd.DataFrame:
    """Masks-table rows (source="model") of the automatic masks of one image (``image``: its images-table row)
    that pass the ``confident`` filter, from its cached embedding: what stage 2 places before a person looks,
    here or as a Label Studio prediction (tasks.labelstudio.push)."""
    if keeps_nothing(confident):
        return records_to_rows([], image_id, source="model", model_version=ctx.model_version)
    size = (int(image["height"]), int(image["width"]))
    kept = filter_records(generate_records(ctx, generator, image_id, image), size, confident)
    return records_to_rows(kept, image_id, source="model", model_version=ctx.model_version)


@shard_task("prefill")
def prefill(
    shard: Shard,
    settings: AutogenSettings,
    confident: FilterSettings,
    annotator: AnnotatorSettings,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> ShardSummary:
    """Stage 2 on one shard of images (a tasks.stage.ShardTask): each image's confident automatic masks
    (confident_rows), then the annotator's masks for the objects they do not cover."""
    ctx = StageContext.open(shard, device)
    settings, confident = ctx.calibrated(settings, confident)
    generator = make_generator(ctx.model, settings)
    predictor = SamPredictor(ctx.model)
    who = annotator.build()
    truth = load_ground_truth(annotator.ground_truth) if annotator.ground_truth else None

    def per_image(image_id, image):
        prefilled = confident_rows(ctx, generator, image_id, image, confident)
        masks = [decode_mask(r.counts, r.height, r.width) for r in prefilled.itertuples(index=False)]
        request = annotation_request(ctx, predictor, image_id, image, truth, prefilled=masks)
        added = annotated_rows(who.annotate(request), image_id, model_version=shard.model_version)
        return pd.concat([f for f in (prefilled, added) if len(f)] or [prefilled], ignore_index=True)

    settings_used = {
        "autogen": settings.model_dump(),
        "confident": confident.model_dump(),
        "annotator": annotator.model_dump(),
    }
    return ctx.run_shard(settings_used, per_image, on_progress)
