"""Stage 2, semi-automatic: the model's confident masks are placed first, annotators add what is missing.

Confident masks (high predicted IoU and stability) come from the automatic mask generator over the cached
embeddings and are kept without a person looking; the annotator is then asked only for the objects those masks
do not cover, so their time goes to the less prominent objects and the masks per image rise.
"""

from __future__ import annotations

from prefect import flow

from flows.params import SemiAutomaticParams
from flows.steps import run_stage
from tasks.prefill import prefill

STAGE = "semi_automatic"


@flow(name="semi-automatic", log_prints=True)
def semi_automatic(params: SemiAutomaticParams | None = None) -> dict:
    """Stage 2: embed, pre-fill confident automatic masks, then the annotator adds the missing objects."""
    params = params or SemiAutomaticParams()
    return run_stage(
        params,
        STAGE,
        prefill,
        settings=params.autogen,
        confident=params.confident,
        annotator=params.annotator,
    )
