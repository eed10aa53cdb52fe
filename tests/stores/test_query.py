"""The query helpers answer the common questions with pandas objects."""

import numpy as np

from stores import decode_image_masks, masks_of_round, masks_per_image


def test_masks_per_image_and_of_round(store, make_masks, images_frame):
    store.write_images(images_frame(["a", "b", "c"]))
    store.write_masks(make_masks("a", 3, seed=1)[0], 0, "fully_automatic", 0)
    store.write_masks(make_masks("b", 2, seed=2)[0], 0, "fully_automatic", 1)
    store.write_masks(make_masks("a", 1, seed=3, source="human")[0], 1, "assisted_manual", 0)
    per_image = masks_per_image(store, round=0).set_index("image_id")["masks"]
    assert per_image.to_dict() == {"a": 3, "b": 2, "c": 0}
    assert masks_per_image(store).set_index("image_id")["masks"].to_dict() == {"a": 4, "b": 2, "c": 0}
    assert len(masks_of_round(store, 1)) == 1 and len(masks_of_round(store, 0, stage="assisted_manual")) == 0


def test_decode_image_masks_returns_the_binary_masks(local_store, make_masks):
    df, masks = make_masks("a", 4, seed=4)
    local_store.write_masks(df, 0, "fully_automatic", 0)
    decoded, rows = decode_image_masks(local_store, "a")
    assert decoded.shape == (4, 24, 32) and decoded.dtype == bool
    order = [df["counts"].tolist().index(c) for c in rows["counts"]]
    np.testing.assert_array_equal(decoded, np.stack([masks[i] for i in order]).astype(bool))
    empty, none = decode_image_masks(local_store, "zzz")
    assert empty.shape[0] == 0 and none.empty
