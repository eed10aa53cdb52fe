"""A text-prompted fully automatic round end to end, as a user runs it: the demo's image writer makes a small store
of synthetic scenes, a text model is registered, and `sam-engine find PHRASE` writes every instance as round N's
automatic masks, which plain pandas reads with their phrase. One phrase per round and stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from stores import Store
from tasks.demo_data import write_synthetic_images

pytestmark = pytest.mark.usefixtures("prefect_harness")

runner = CliRunner()
PHRASE = "every part inside the mottled object"  # on the first train scene, the one the text model learnt


@pytest.fixture
def text_store(tmp_path, register_text_model, register_plain_model):
    """Two demo scenes of the shapes domain (the first is the one the shared text model trained on) ingested into a
    new store, the text model registered as text-v1 and the embedded weights without a text path as plain."""
    images = write_synthetic_images(tmp_path / "demo", train=2, test=0, corrupt=0, domain="shapes")
    store_url = (tmp_path / "store").as_uri()
    result = runner.invoke(app, ["ingest", images["train_dir"], "--store", store_url])
    assert result.exit_code == 0, result.output
    register_text_model(Store(store_url), "text-v1")
    register_plain_model(Store(store_url), "plain")
    return store_url


def _find(store_url, phrase, round_, model="text-v1"):
    args = [
        "find",
        phrase,
        "--round",
        str(round_),
        "-m",
        model,
        "--embed-backend",
        "local",
        "--store",
        store_url,
    ]
    return runner.invoke(app, args)


def _figures(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def test_a_text_round_writes_every_instance_as_auto_masks_that_plain_pandas_reads(text_store):
    result = _find(text_store, PHRASE, 1)
    assert result.exit_code == 0, result.output
    figures = _figures(result.output)
    assert figures["images"] == 2 and figures["masks"] > 0 and figures["stage"] == "fully_automatic"

    plain = pd.read_parquet(Path(text_store.removeprefix("file://")) / "masks")
    assert len(plain) == figures["masks"]
    assert set(plain["phrase"]) == {PHRASE} and set(plain["source"]) == {"auto"}
    assert set(plain["round"].astype(int)) == {1} and set(plain["stage"].astype(str)) == {"fully_automatic"}
    assert plain["predicted_iou"].notna().all() and set(plain["model_version"]) == {"text-v1"}

    # The same phrase again resumes: nothing is duplicated.
    again = _find(text_store, PHRASE, 1)
    assert again.exit_code == 0, again.output
    assert len(pd.read_parquet(Path(text_store.removeprefix("file://")) / "masks")) == figures["masks"]


def test_another_phrase_in_the_same_round_is_refused_before_any_work(text_store):
    assert _find(text_store, PHRASE, 1).exit_code == 0
    result = _find(text_store, "every striped object", 1)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: round 1 fully_automatic already holds masks of phrase {PHRASE!r}; one phrase per round and stage "
        "(a second would replace them): give 'every striped object' another round"
    )
    assert set(Store(text_store).masks(round=1)["phrase"]) == {PHRASE}  # the first phrase's masks are kept
    other = _find(text_store, "every striped object", 2)
    assert other.exit_code == 0, other.output
    masks = Store(text_store).masks()
    assert set(zip(masks["round"].astype(int), masks["phrase"], strict=True)) == {
        (1, PHRASE),
        (2, "every striped object"),
    }


@pytest.mark.parametrize(
    "phrase, model, message",
    [
        (
            PHRASE,
            "plain",
            "error: model 'plain' has no text path; train one with scripts/train_text.py",
        ),
        ("   ", "text-v1", "error: text is empty (only whitespace): the text encoder needs a phrase"),
        ("every red triangle", "text-v1", "['triangle'] not in the embedded text encoder's vocabulary"),
        ("the " * 12 + "object", "text-v1", "takes at most 12 (its context length)"),
    ],
)
def test_a_phrase_or_model_the_round_cannot_use_is_one_line_before_any_image_is_embedded(
    text_store, phrase, model, message
):
    result = _find(text_store, phrase, 1, model=model)
    assert result.exit_code == 2 and message in result.output.strip().splitlines()[-1]
    assert Store(text_store).masks().empty
    assert not any(Store(text_store).has_embedding(i, "text-v1") for i in Store(text_store).images().image_id)


def test_help_of_find_says_what_it_takes_in_words():
    import re

    result = CliRunner().invoke(app, ["find", "--help"], env={"COLUMNS": "140"})
    assert result.exit_code == 0 and not re.search(r"<(str|int|float|bool|path|list)", result.output)
    assert re.search(r"\* +PHRASE +what to find, e.g. 'every striped object'", result.output)
    assert re.search(r"--round +-r +N \[x>=0\] +round number: one phrase each", result.output)
    assert re.search(r"--embed-backend +ray\|local .*\[default: ray\]", result.output)
