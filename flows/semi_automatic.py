"""Stage 2, semi-automatic: the model's confident masks are placed first, annotators add what is missing.

Confident masks (high predicted IoU and stability) come from the automatic mask generator over the cached
embeddings and are kept without a person looking; the annotator is then asked only for the objects those masks
do not cover, so their time goes to the less prominent objects and the masks per image rise.
"""

from __future__ import annotations

from prefect import flow

from flows.params import SemiAutomaticParams
from flows.steps import check_inputs, finish_stage, ingest_and_select, now, run_embed, run_shards
from tasks.prefill import prefill

STAGE = "semi_automatic"


@flow(name="semi-automatic", log_prints=True)
def semi_automatic(params: SemiAutomaticParams | None = None) -> dict:
    """Stage 2: embed, pre-fill confident automatic masks, then the annotator adds the missing objects."""
    params = params or SemiAutomaticParams()
    started = now()
    params = check_inputs(params, needs_ground_truth=params.annotator.ground_truth)
    image_ids, skipped = ingest_and_select(params)
    image_ids, failed = run_embed(params, image_ids)
    summaries = run_shards(
        prefill,
        params,
        STAGE,
        image_ids,
        settings=params.autogen,
        confident=params.confident,
        annotator=params.annotator,
    )
    return finish_stage(params, STAGE, summaries, started, skipped + failed)
