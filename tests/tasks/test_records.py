"""Mask rows and COCO ground truth round-trip exactly; mask ids are deterministic."""

import numpy as np
import pytest

from tasks.ground_truth import GroundTruth, write_coco
from tasks.records import decode_mask, decode_rows, encode_mask, mask_rows


def _masks():
    a = np.zeros((20, 30), bool)
    a[2:8, 3:12] = True
    b = np.zeros((20, 30), bool)
    b[10:19, 20:29] = True
    return [a, b]


def test_encode_decode_roundtrip_with_area_and_xywh_box():
    a = _masks()[0]
    counts, area, bbox = encode_mask(a)
    assert area == 54 and bbox == [3.0, 2.0, 9.0, 6.0]
    assert np.array_equal(decode_mask(counts, 20, 30), a)


def test_mask_rows_are_deterministic_and_decode_back():
    masks = _masks()
    rows = mask_rows(
        "img",
        masks,
        round=1,
        stage="assisted_manual",
        source="human",
        model_version="m0",
        clicks=[2, 3],
        seconds=[11.0, 14.0],
        annotator="simulated",
    )
    again = mask_rows("img", masks, round=1, stage="assisted_manual", source="human", model_version="m0")
    assert list(rows.mask_id) == list(again.mask_id) and rows.mask_id.nunique() == 2
    other = mask_rows("img", masks, round=2, stage="assisted_manual", source="human", model_version="m0")
    assert not set(rows.mask_id) & set(other.mask_id)
    assert all(np.array_equal(x, y) for x, y in zip(decode_rows(rows), masks, strict=True))
    assert list(rows.clicks) == [2, 3]
    with pytest.raises(ValueError, match="per-mask"):
        mask_rows("img", masks, round=1, stage="s", source="auto", model_version="m", clicks=[1])


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
