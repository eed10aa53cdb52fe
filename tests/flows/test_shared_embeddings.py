"""A version trained with its image encoder frozen reuses its parent's embeddings; any other version re-embeds."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from sam_core.checkpoint import encoder_digest
from sam_core.train import TrainConfig
from stores import Store
from tasks.models import embedding_version, model_row


def test_encoder_digest_is_of_the_encoder_weights_only():
    from sam_core.build import build_sam

    torch.manual_seed(0)
    state = build_sam("tiny").state_dict()
    half = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}
    stored = {k: (v.half() if v.is_floating_point() else v) for k, v in half.items()}
    assert encoder_digest(stored) == encoder_digest(half)  # fp16-stored and fp32 copies of the same weights
    decoder = next(k for k in half if k.startswith("mask_decoder.") and half[k].is_floating_point())
    assert encoder_digest({**half, decoder: half[decoder] + 1}) == encoder_digest(half)
    encoder = next(k for k in half if k.startswith("image_encoder.") and half[k].is_floating_point())
    changed = half[encoder].clone()
    changed.view(-1)[0] += 1e-3
    assert encoder_digest({**half, encoder: changed}) != encoder_digest(half)
    with pytest.raises(ValueError, match="no image_encoder"):
        encoder_digest({decoder: half[decoder]})


def test_a_frozen_encoder_retrain_shares_its_parents_embeddings_and_a_full_one_does_not(
    prefect_harness, engine
):
    from tasks.annotate import AnnotatorSettings, annotate
    from tasks.autogen import AutogenSettings, autogen
    from tasks.embed import embed
    from tasks.filter import FilterSettings
    from tasks.ingest import ingest
    from tasks.models import register_model
    from tasks.retrain import retrain
    from tasks.shards import Shard

    url, model = engine["store"], engine["model"]
    ingest.fn(url, [engine["images"]])
    store = Store(url)
    ids = sorted(store.images()["image_id"])
    first = embed.fn(url, model, backend="local")
    assert sorted(first.embedded) == ids
    annotator = AnnotatorSettings(ground_truth=engine["ground_truth"], max_clicks=1, seconds_per_image=None)
    annotate.fn(Shard(url, model, 1, "assisted_manual", "00000", tuple(ids)), annotator)
    tiny = TrainConfig(steps=1, masks_per_image=2, correction_points=0, no_point_iterations=0)

    retrain.fn(url, model, "frozen", 1, replace(tiny, cache_embeddings=True), backend="local")
    retrain.fn(url, "frozen", "frozen-again", 1, replace(tiny, freeze_image_encoder=True), backend="local")
    for version in ("frozen", "frozen-again"):  # through the chain, to the version that owns the encoder
        assert model_row(store, version)["config"]["embeddings_of"] == model
        assert embedding_version(store, version) == model
        again = embed.fn(url, version, backend="local")
        assert again.embedded == [] and again.skipped_existing == len(ids) and not again.failed
    assert store.embedded_image_ids("frozen") == set()  # nothing was written under the new names

    # The shared embeddings are what the new version's own encoder computes: a copy of its checkpoint registered
    # by hand (no lineage, so it re-embeds) gets the same arrays.
    register_model(store, "frozen-copy", "tiny", model_row(store, "frozen")["checkpoint_uri"])
    assert embedding_version(store, "frozen-copy") == "frozen-copy"
    assert sorted(embed.fn(url, "frozen-copy", backend="local").embedded) == ids
    for image_id in ids:
        np.testing.assert_allclose(
            store.get_embedding(image_id, "frozen-copy"), store.get_embedding(image_id, model), atol=1e-5
        )
    # The stages read them: automatic masks of the frozen version need no embed of their own.
    summary = autogen.fn(
        Shard(url, "frozen-again", 2, "fully_automatic", "00000", tuple(ids)),
        AutogenSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        FilterSettings(min_area=0, max_area_fraction=1.0),
    )
    assert summary["images"] == len(ids) and not summary["skipped"]

    retrain.fn(url, model, "full", 1, replace(tiny, lr=1e-2), backend="local")  # the encoder trained too
    assert "embeddings_of" not in model_row(store, "full")["config"]
    assert embedding_version(store, "full") == "full"
    assert sorted(embed.fn(url, "full", backend="local").embedded) == ids


def test_a_missing_shared_embedding_names_both_versions(engine):
    from tasks.models import cached_embedding

    store = Store(engine["store"])
    with pytest.raises(KeyError, match=r"model r2 \(its encoder's embeddings are kept under 'seed'\)"):
        cached_embedding(store, "img-1", "r2", "seed")
    with pytest.raises(KeyError, match="no embedding for model r2: run embed first"):
        cached_embedding(store, "img-1", "r2")
