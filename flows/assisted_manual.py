"""Stage 1, assisted-manual: annotators click, SAM answers every click, and they accept each mask once it is right.

The images are embedded once (the encoder is the heavy part); then, image by image, the annotator labels the
objects in order of prominence, SAM turning each click into a mask from the cached embedding. Every accepted
mask is stored with the clicks and seconds it took.
"""

from __future__ import annotations

from prefect import flow

from flows.params import AssistedManualParams
from flows.steps import run_stage
from tasks.annotate import annotate

STAGE = "assisted_manual"


@flow(name="assisted-manual", log_prints=True)
def assisted_manual(params: AssistedManualParams | None = None) -> dict:
    """Stage 1: embed the images, then the annotator labels each one with SAM answering every click."""
    params = params or AssistedManualParams()
    return run_stage(params, STAGE, annotate, annotator=params.annotator)
