"""Mask rows and COCO ground truth round-trip exactly; the store derives each mask's area, box and id."""

import numpy as np
import pandas as pd
import pytest

from stores import BBOX, CROP_BOX, Store
from tasks.ground_truth import GroundTruth, write_coco
from tasks.records import MASK_COLUMNS, decode_mask, decode_rows, encode_mask, mask_rows


def _masks():
    a = np.zeros((20, 30), bool)
    a[2:8, 3:12] = True
    b = np.zeros((20, 30), bool)
    b[10:19, 20:29] = True
    return [a, b]


def test_encode_decode_roundtrip():
    a = _masks()[0]
    assert np.array_equal(decode_mask(encode_mask(a), 20, 30), a)


def test_mask_rows_speak_the_masks_schema_and_decode_back():
    masks = _masks()
    rows = mask_rows(
        "img",
        masks,
        source="human",
        model_version="m0",
        point_coords=[[[3, 4]], [[21.5, 12.0], [22, 13]]],
        clicks=[2, 3],
        seconds=[11.0, 14.0],
        annotator="simulated",
    )
    assert list(rows.columns) == MASK_COLUMNS
    assert rows["phrase"].isna().all()  # clicks answer no phrase
    assert all(np.array_equal(x, y) for x, y in zip(decode_rows(rows), masks, strict=True))
    assert list(rows.clicks) == [2, 3]
    assert list(rows.point_coords_json) == ["[[3.0, 4.0]]", "[[21.5, 12.0], [22.0, 13.0]]"]
    assert rows[CROP_BOX].to_numpy().tolist() == [[0.0, 0.0, 30.0, 20.0]] * 2  # the whole image
    rle = {"size": [20, 30], "counts": encode_mask(masks[0]).encode("ascii")}
    assert mask_rows("img", [rle], source="auto", model_version="m0").counts.iloc[0] == rows.counts.iloc[0]
    with pytest.raises(ValueError, match="per-mask"):
        mask_rows("img", masks, source="auto", model_version="m", clicks=[1])


def test_rows_of_a_text_prompt_carry_its_phrase_into_the_store_and_plain_pandas(tmp_path):
    store = Store(str(tmp_path / "store"))
    rows = mask_rows("img", _masks(), source="auto", model_version="m0", phrase="every red ring")
    assert list(rows["phrase"]) == ["every red ring"] * 2
    store.write_masks(rows, round=1, stage="fully_automatic", shard="a")
    store.write_masks(
        mask_rows("img", _masks()[:1], source="human", model_version="m0"), 1, "assisted_manual", "a"
    )
    plain = pd.read_parquet(tmp_path / "store" / "masks").sort_values("stage")
    assert plain["phrase"].isna().tolist() == [True, False, False]
    assert plain["phrase"].tolist()[1:] == ["every red ring"] * 2


def test_the_store_derives_area_box_and_deterministic_ids(tmp_path):
    store = Store(str(tmp_path / "store"))
    rows = mask_rows("img", _masks(), source="human", model_version="m0")
    for round, shard in ((1, "a"), (1, "b"), (2, "a")):
        store.write_masks(rows, round=round, stage="assisted_manual", shard=shard)
    stored = store.masks(round=1).sort_values("mask_id")
    assert sorted(stored["area"]) == [54, 54, 81, 81]
    assert stored.set_index("area")[BBOX].loc[54].to_numpy().tolist()[0] == [3.0, 2.0, 9.0, 6.0]
    # the same masks written again in the same round and stage get the same ids; in another round, others
    ids = stored["mask_id"].tolist()
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert not set(ids) & set(store.masks(round=2)["mask_id"])


def test_coco_ground_truth_roundtrip_by_file_name(tmp_path):
    masks = _masks()
    uri = str(tmp_path / "gt.json")
    write_coco(uri, [("a.png", masks), ("b.png", masks[:1])])
    gt = GroundTruth.from_coco(uri)
    assert gt.has("s3://bucket/images/a.png") and not gt.has("c.png")
    got = gt.masks_for("file:///x/a.png")
    assert len(got) == 2 and all(np.array_equal(x, y) for x, y in zip(got, masks, strict=True))
    with pytest.raises(KeyError, match="c.png"):
        gt.masks_for("c.png")


def test_bad_ground_truth_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        GroundTruth.from_coco(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        GroundTruth.from_coco(str(tmp_path / "missing.json"))
