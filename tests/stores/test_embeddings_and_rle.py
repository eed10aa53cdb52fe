"""float16 embedding error, measured; the vectorised RLE codec against pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from stores.rle import check_counts, decode_runs, encode_runs


def test_float16_embedding_error_is_as_documented(local_store):
    # A realistic SAM image embedding: 256 x 64 x 64 after the neck's LayerNorm, so roughly unit-scale values
    # with heavier tails; scaled channels mimic the spread across channels.
    rng = np.random.default_rng(0)
    emb = (rng.standard_t(df=5, size=(256, 64, 64)) * rng.uniform(0.1, 2.0, (256, 1, 1))).astype(np.float32)
    local_store.put_embedding("img1", "vit_b", emb, dtype="float16")
    back = local_store.get_embedding("img1", "vit_b")
    err = np.abs(back - emb)
    big = np.abs(emb) >= 6.1e-5  # float16 normal range
    rel = err[big] / np.abs(emb[big])
    print(
        f"float16: max abs error {err.max():.2e}, max relative error {rel.max():.2e}, max |x| {np.abs(emb).max():.1f}"
    )
    assert rel.max() <= 2**-11 * 1.0001
    assert err[~big].max(initial=0) <= 3e-8
    assert err.max() <= 2**-11 * np.abs(emb).max()  # so absolute error grows with the largest value held
    size16 = local_store.fs.size(local_store._embedding_path("img1", "vit_b"))
    local_store.put_embedding("img1", "vit_b32", emb)
    assert size16 < 0.6 * local_store.fs.size(local_store._embedding_path("img1", "vit_b32"))


def test_float16_refuses_values_it_cannot_hold(local_store):
    with pytest.raises(ValueError, match="exceed float16 range"):
        local_store.put_embedding("img1", "v", np.full((2, 2, 2), 1e6, np.float32), dtype="float16")
    with pytest.raises(ValueError, match="expected C x H x W"):
        local_store.put_embedding("img1", "v", np.zeros((2, 2), np.float32))
    assert not local_store.has_embedding("img1", "v")


def test_rle_codec_matches_pycocotools():
    rng = np.random.default_rng(1)
    masks = []
    for i in range(300):
        h, w = rng.integers(1, 200, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if i % 7 == 0:
            m[:] = i % 2  # all background / all foreground edge cases
        masks.append(m)
    counts = [mask_utils.encode(np.asfortranarray(m))["counts"].decode() for m in masks]
    area = check_counts(counts, [m.shape[0] for m in masks], [m.shape[1] for m in masks])
    assert area.tolist() == [int(m.sum()) for m in masks]
    runs, owner = decode_runs(counts)
    assert encode_runs(runs, owner, len(counts)).to_pylist() == counts
