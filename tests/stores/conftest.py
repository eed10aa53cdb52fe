"""Fixtures for the stores tests: a Store on file://, memory:// and s3:// (moto's server over real HTTP)."""

import uuid

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from stores import Store


@pytest.fixture(scope="session")
def s3_endpoint(load_script):
    """A moto S3 server on 127.0.0.1 for the whole session (a child process, stopped by its own pid)."""
    module = load_script("s3_server")
    with module.S3Server() as server:
        yield server.endpoint_url, module.FAKE_CREDENTIALS


def _s3_store(endpoint, credentials, monkeypatch) -> Store:
    import s3fs

    for key, value in credentials.items():  # fake credentials for this fixture only
        monkeypatch.setenv(key, value)
    options = {"endpoint_url": endpoint}
    bucket = f"engine-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return Store(f"s3://{bucket}/root", storage_options=options)


@pytest.fixture(params=["file", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def store(request, tmp_path, monkeypatch):
    """An empty Store on each backend."""
    if request.param == "file":
        yield Store(f"file://{tmp_path}/engine")
    elif request.param == "memory":
        s = Store(f"memory://engine-{uuid.uuid4().hex[:12]}")
        yield s
        s.fs.rm(s.root, recursive=True)
    else:
        endpoint, credentials = request.getfixturevalue("s3_endpoint")
        yield _s3_store(endpoint, credentials, monkeypatch)


@pytest.fixture
def local_store(tmp_path):
    return Store(str(tmp_path / "engine"))


def blob_masks(rng: np.random.Generator, height: int, width: int, n: int) -> list[np.ndarray]:
    """n random elliptic blobs, each H x W uint8, none empty."""
    yy, xx = np.mgrid[:height, :width]
    out = []
    while len(out) < n:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(2, height / 2), rng.uniform(2, width / 2)
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        if m.any():
            out.append(m)
    return out


def masks_frame(image_id: str, masks: list[np.ndarray], source: str = "auto", seed: int = 0) -> pd.DataFrame:
    """A masks DataFrame (required columns + scores + point_coords) for one image's binary masks."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m))
        ys, xs = np.nonzero(m)
        rows.append(
            {
                "image_id": image_id,
                "counts": rle["counts"].decode(),
                "height": m.shape[0],
                "width": m.shape[1],
                "predicted_iou": float(rng.uniform(0.8, 1.0)),
                "stability_score": float(rng.uniform(0.9, 1.0)),
                "point_coords": [[float(xs[0]), float(ys[0])]],
                "source": source,
                "model_version": "tiny-v0",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def make_masks():
    """make_masks(image_id, n, height=24, width=32, seed=0, source="auto") -> (DataFrame, list of H x W masks)."""

    def make(image_id: str, n: int, height: int = 24, width: int = 32, seed: int = 0, source: str = "auto"):
        masks = blob_masks(np.random.default_rng(seed), height, width, n)
        return masks_frame(image_id, masks, source=source, seed=seed), masks

    return make


@pytest.fixture
def images_frame():
    def make(ids, height: int = 24, width: int = 32) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "image_id": list(ids),
                "uri": [f"file:///images/{i}.jpg" for i in ids],
                "width": width,
                "height": height,
                "sha256": [f"{i}-sha" for i in ids],
                "split": "train",
            }
        )

    return make
