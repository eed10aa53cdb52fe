"""Stage 3, fully automatic: a regular grid of point prompts per image, and the masks that pass the filter.

No people: each image's cached embedding is prompted with a grid of points, the decoder's masks are filtered by
predicted IoU and stability, de-duplicated by box NMS and cleaned of small holes and islands, and kept. With a
phrase (``text``), each image is asked for every instance of it instead (tasks.text_autogen): a text model's
round, one phrase per round and stage, checked before any image is embedded.
"""

from __future__ import annotations

from prefect import flow

from flows.params import FullyAutomaticParams
from flows.steps import check_inputs, finish_stage, ingest_and_select, now, run_embed, run_shards
from tasks.autogen import autogen
from tasks.text_autogen import check_text_round, text_autogen

STAGE = "fully_automatic"


@flow(name="fully-automatic", log_prints=True)
def fully_automatic(params: FullyAutomaticParams | None = None) -> dict:
    """Stage 3: embed, then generate and filter automatic masks for every image."""
    params = params or FullyAutomaticParams()
    started = now()
    params = check_inputs(params)
    text = params.text_settings()
    if text is not None:
        check_text_round(params.store, params.model_version, params.round, STAGE, text.phrase)
    image_ids, skipped = ingest_and_select(params)
    image_ids, failed = run_embed(params, image_ids)
    if text is not None:
        summaries = run_shards(text_autogen, params, STAGE, image_ids, settings=text)
    else:
        summaries = run_shards(
            autogen, params, STAGE, image_ids, settings=params.autogen, filter=params.filter
        )
    return finish_stage(params, STAGE, summaries, started, skipped + failed)
