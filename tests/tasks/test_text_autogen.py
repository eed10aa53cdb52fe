"""The text-prompted automatic stage: a registered text model finds a phrase's instances in each image of a shard,
writes them with source=auto and the phrase (which plain pandas reads), and an image the phrase is judged absent
from gets no mask and is named in the summary."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from sam_core import SamPredictor
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_model import text_checkpoint
from sam_core.text_train import TextTrainConfig, TextTrainer
from stores import Store
from tasks.models import EMBEDDED_VERSION, register_model
from tasks.report import stage_figures
from tasks.shards import Shard
from tasks.text_autogen import TextAutogenSettings, text_autogen

VERSION = "text-m"
PHRASE = "every part inside the mottled object"
ONE_SCENE = dict(
    dataset_size=1, scenes_per_step=1, warmup_steps=2, lr=2e-3, point_probability=0.0, box_probability=0.0
)


@pytest.fixture(scope="module")
def trained():
    """A text model trained for 15 steps on one scene (seconds): enough for its phrases to give masks."""
    trainer = TextTrainer(TextTrainConfig(steps=15, decoder_lr_scale=0.1, **ONE_SCENE))
    for _ in range(15):
        trainer.step()
    return trainer.model.eval(), trainer.text_encoder.eval()


@pytest.fixture
def text_store(tmp_path, trained):
    """A store holding two copies of the scene, embedded by a registered text model version."""
    model, encoder = trained
    store = Store((tmp_path / "engine").as_uri())
    buffer = io.BytesIO()
    torch.save(text_checkpoint(model, encoder, config={}, metadata={}), buffer)
    register_model(store, VERSION, "tiny_conv", store.write_checkpoint(VERSION, buffer.getvalue()))
    scene = make_scene(split_seeds("train", 1)[0])
    predictor = SamPredictor(model)
    predictor.set_image(scene.image)
    embedding = predictor.get_image_embedding()[0].numpy()
    ids = ["img-a", "img-b"]
    store.write_images(
        pd.DataFrame(
            {
                "image_id": ids,
                "uri": [f"file:///images/{i}.png" for i in ids],
                "width": 256,
                "height": 256,
                "sha256": ids,
                "split": "train",
            }
        )
    )
    for image_id in ids:
        store.put_embedding(image_id, VERSION, embedding)
    return store, Shard(store.url, VERSION, 1, "fully_automatic", "00000", tuple(ids))


def test_an_empty_or_blank_phrase_is_refused_when_the_settings_are_made():
    for phrase in ("", "   "):
        with pytest.raises(ValidationError, match="phrase"):
            TextAutogenSettings(phrase=phrase)
    assert TextAutogenSettings(phrase="  every ring ").phrase == "every ring"


def test_a_present_phrase_writes_its_instances_with_the_phrase_that_pandas_reads(text_store):
    store, shard = text_store
    settings = TextAutogenSettings(phrase=PHRASE, presence_threshold=0.0, points_per_side=8)
    summary = text_autogen.fn(shard, settings)
    assert summary["images"] == 2 and summary["masks"] > 0 and summary["absent"] == []
    masks = store.masks(round=1, stage="fully_automatic")
    assert len(masks) == summary["masks"] and set(masks["source"]) == {"auto"}
    assert set(masks["phrase"]) == {PHRASE} and masks["predicted_iou"].notna().all()
    plain = pd.read_parquet(store.table_url("masks"))
    assert set(plain["phrase"]) == {PHRASE}
    again = text_autogen.fn(shard, settings)  # a rerun is the same shard: skipped, same summary
    assert again["resumed"] and again["masks"] == summary["masks"] and again["absent"] == []


def test_an_image_the_phrase_is_judged_absent_from_gets_no_mask_and_the_summary_says_so(text_store):
    store, shard = text_store
    settings = TextAutogenSettings(phrase=PHRASE, presence_threshold=1.0, points_per_side=8)
    summary = text_autogen.fn(shard, settings)
    assert summary["masks"] == 0 and summary["skipped"] == []
    assert [a["image_id"] for a in summary["absent"]] == ["img-a", "img-b"]
    assert all(0.0 <= a["presence"] < 1.0 for a in summary["absent"])
    assert store.masks(round=1, stage="fully_automatic").empty
    figures = stage_figures(store, 1, "fully_automatic", [summary], VERSION)
    assert figures["absent"] == 2 and figures["masks"] == 0


def test_a_model_without_a_text_path_is_refused_saying_how_to_get_one(text_store):
    store, shard = text_store
    plain = Shard(store.url, EMBEDDED_VERSION, 1, "fully_automatic", "00000", shard.image_ids)
    with pytest.raises(
        ValueError, match="model .embedded. has no text path; train one with scripts/train_text.py"
    ):
        text_autogen.fn(plain, TextAutogenSettings(phrase=PHRASE))
