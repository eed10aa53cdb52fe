"""Stage 1, assisted-manual: annotators click, SAM answers every click, and they accept each mask once it is right.

The images are embedded once (the encoder is the heavy part); then, image by image, the annotator labels the
objects in order of prominence, SAM turning each click into a mask from the cached embedding. Every accepted
mask is stored with the clicks and seconds it took.
"""

from __future__ import annotations

from prefect import flow

from flows.params import AssistedManualParams
from flows.steps import check_inputs, finish_stage, ingest_and_select, now, run_embed, run_shards
from tasks.annotate import annotate

STAGE = "assisted_manual"


@flow(name="assisted-manual", log_prints=True)
def assisted_manual(params: AssistedManualParams | None = None) -> dict:
    """Stage 1: embed the images, then the annotator labels each one with SAM answering every click."""
    params = params or AssistedManualParams()
    started = now()
    params = check_inputs(params, needs_ground_truth=params.annotator.ground_truth)
    image_ids, skipped = ingest_and_select(params)
    image_ids, failed = run_embed(params, image_ids)
    summaries = run_shards(annotate, params, STAGE, image_ids, annotator=params.annotator)
    return finish_stage(params, STAGE, summaries, started, skipped + failed)
