"""Stage 3, fully automatic: a regular grid of point prompts per image, and the masks that pass the filter.

No people: each image's cached embedding is prompted with a grid of points, the decoder's masks are filtered by
predicted IoU and stability, de-duplicated by box NMS and cleaned of small holes and islands, and kept. With a
phrase (``text``), each image is asked for every instance of it instead (tasks.text_autogen): a text model's
round, one phrase per round and stage, checked before any image is embedded.
"""

from __future__ import annotations

from prefect import flow

from flows.params import FullyAutomaticParams
from flows.steps import run_stage
from tasks.autogen import autogen
from tasks.text_autogen import check_text_round, text_autogen

STAGE = "fully_automatic"


@flow(name="fully-automatic", log_prints=True)
def fully_automatic(params: FullyAutomaticParams | None = None) -> dict:
    """Stage 3: embed, then generate and filter automatic masks for every image."""
    params = params or FullyAutomaticParams()
    text = params.text_settings()
    if text is not None:

        def one_phrase_a_round(params: FullyAutomaticParams) -> None:
            check_text_round(params.store, params.model_version, params.round, STAGE, text.phrase)

        return run_stage(params, STAGE, text_autogen, check=one_phrase_a_round, settings=text)
    return run_stage(params, STAGE, autogen, settings=params.autogen, filter=params.filter)
