"""COCO JSON and SA-1B per-image JSON, both ways."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stores import Store, export_coco, export_sa1b, import_coco, import_sa1b


@pytest.fixture
def filled(local_store, make_masks, images_frame):
    local_store.write_images(images_frame(["img1", "img2", "img3"]))
    for n, image_id in enumerate(["img1", "img2", "img3"]):
        df, _ = make_masks(image_id, 4 + n, seed=n)
        local_store.write_masks(df, 0, "fully_automatic", n)
    return local_store


def test_coco_export_loads_in_pycocotools_and_scores_ap_1_against_itself(filled, tmp_path):
    path = tmp_path / "coco.json"
    data = export_coco(filled, str(path), round=0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dt = gt.loadRes([dict(a) for a in data["annotations"]])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(gt.getAnnIds()) == 15 and len(gt.getImgIds()) == 3
    assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    # and a sanity check that the metric can fail: drop half the detections
    with contextlib.redirect_stdout(io.StringIO()):
        dt_half = gt.loadRes([dict(a) for a in data["annotations"][::2]])
        ev_half = COCOeval(gt, dt_half, iouType="segm")
        ev_half.evaluate()
        ev_half.accumulate()
        ev_half.summarize()
    assert ev_half.stats[0] < 0.9


def test_coco_import_of_an_export_gives_the_same_masks(filled, tmp_path):
    data = export_coco(filled, round=0)
    other = Store(str(tmp_path / "other"))
    import_coco(other, data, 3, "assisted_manual", "coco", mask_source="human")
    a = filled.masks().set_index("mask_id").sort_index()
    b = other.masks().set_index("mask_id").sort_index()
    assert (a.index == b.index).all()  # sam_mask_id travels with the export
    for col in ("image_id", "counts", "height", "width", "area", "predicted_iou", "source"):
        assert a[col].tolist() == b[col].tolist(), col
    assert sorted(other.images()["image_id"]) == ["img1", "img2", "img3"]


def test_coco_import_accepts_polygons_and_uncompressed_rle(local_store):
    data = {
        "images": [{"id": 5, "file_name": "dir/cat.jpg", "width": 10, "height": 8}],
        "annotations": [
            {"id": 1, "image_id": 5, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]]},
            {"id": 2, "image_id": 5, "segmentation": {"size": [8, 10], "counts": [3, 5, 72]}},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    import_coco(local_store, data, 0, "assisted_manual", 0)
    got = local_store.masks().sort_values("external_id")
    assert got["image_id"].tolist() == ["cat", "cat"] and got["area"].tolist()[1] == 5
    assert got["area"].iat[0] > 0


def _sa1b_file(image_id: int, n: int, rng) -> dict:
    from pycocotools import mask as mask_utils

    h, w = 30, 40
    annotations = []
    for k in range(n):
        m = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, 20), rng.integers(0, 30)
        m[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        annotations.append(
            {
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(m.sum()),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "predicted_iou": float(rng.uniform(0.8, 1)),
                "point_coords": [[float(rng.uniform(0, w)), float(rng.uniform(0, h))]],
                "crop_box": [0.0, 0.0, float(w), float(h)],
                "id": 1000 * image_id + k,
                "stability_score": float(rng.uniform(0.9, 1)),
            }
        )
    return {
        "image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
        "annotations": annotations,
    }


def test_sa1b_import_then_export_is_lossless(local_store, tmp_path):
    rng = np.random.default_rng(0)
    originals = {}
    for image_id in (1, 2, 17):
        data = _sa1b_file(image_id, 3 + image_id % 5, rng)
        path = tmp_path / "in" / f"sa_{image_id}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data))
        originals[path.name] = data
    import_sa1b(
        local_store, sorted(str(p) for p in (tmp_path / "in").iterdir()), 0, "fully_automatic", "sa1b"
    )
    paths = export_sa1b(local_store, str(tmp_path / "out"), round=0)
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(originals)
    for path in paths:
        exported = json.loads(open(path).read())
        original = originals[path.rsplit("/", 1)[1]]
        assert exported["image"] == original["image"]
        key = lambda a: a["id"]  # noqa: E731
        assert sorted(exported["annotations"], key=key) == sorted(original["annotations"], key=key)
