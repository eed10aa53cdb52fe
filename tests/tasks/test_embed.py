"""Embed encodes every image once per model version, on a Ray Data actor pool or in process, with equal results."""

import numpy as np
import pytest
from PIL import Image

from stores import Store
from tasks.embed import embed
from tasks.ingest import ingest
from tasks.models import register_model


@pytest.fixture()
def store_with_images(tmp_path):
    import torch

    from sam_core.build import build_sam

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"model": build_sam("tiny").state_dict()}, tmp_path / "tiny.pt")
    url = (tmp_path / "store").as_uri()
    register_model(Store(url), "tiny-random", "tiny", str(tmp_path / "tiny.pt"))
    ingest.fn(url, [str(folder)])
    return url


@pytest.mark.slow
def test_ray_actor_pool_and_local_give_the_same_embeddings(store_with_images, tmp_path, monkeypatch):
    from tasks.ray_cluster import shutdown_ray

    monkeypatch.setenv("SAM_ENGINE_HOME", str(tmp_path / "home"))
    url = store_with_images
    store = Store(url)
    try:
        counts = []
        on_ray = embed.fn(
            url, "tiny-random", backend="ray", batch_size=1, on_progress=lambda *done: counts.append(done)
        )
    finally:
        shutdown_ray()
    assert len(on_ray.embedded) == 2 and not on_ray.failed
    assert counts == [(1, 2), (2, 2)]  # one report per batch the actor pool hands back
    ids = sorted(on_ray.embedded)
    ray_arrays = [store.get_embedding(i, "tiny-random") for i in ids]
    assert ray_arrays[0].shape == (256, 32, 32)

    again = embed.fn(url, "tiny-random", backend="local")
    assert again.embedded == [] and again.skipped_existing == 2  # cached: nothing recomputed

    register_model(store, "tiny-copy", "tiny", str(tmp_path / "tiny.pt"))
    local = embed.fn(url, "tiny-copy", backend="local", batch_size=2)
    assert sorted(local.embedded) == ids
    for i, expected in zip(ids, ray_arrays, strict=True):
        np.testing.assert_allclose(store.get_embedding(i, "tiny-copy"), expected, atol=1e-4)


def test_unknown_model_is_refused_before_any_work(store_with_images):
    with pytest.raises(ValueError, match="unknown model_version 'nope'"):
        embed.fn(store_with_images, "nope", backend="local")
    assert Store(store_with_images).embedded_image_ids("nope") == set()
