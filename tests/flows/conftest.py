"""Fixtures for flow tests: one Prefect test harness per session, and a tiny engine on a temporary file store.

The engine: a few small synthetic scenes (sam_core.synthetic) written as PNG files with their ground truth as a
COCO file, one corrupt PNG, and a randomly initialised tiny model registered as "tiny-random" (the flows' logic is
under test here, not the model's quality, and a random model keeps the fixture independent of trained weights).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

# Flow tests run beside other jobs on 2 cores: one torch thread per process avoids oversubscription.
os.environ.setdefault("SAM_ENGINE_TORCH_THREADS", "1")
torch.set_num_threads(1)

N_TRAIN = 3
N_TEST = 2
MODEL = "tiny-random"


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def engine_template(tmp_path_factory) -> Path:
    """A directory with images/ (train + a corrupt file), test_images/, gt.json and tiny.pt; built once."""
    import torch

    from sam_core.build import build_sam
    from sam_core.synthetic import scene, split_seeds
    from tasks.ground_truth import write_coco

    root = tmp_path_factory.mktemp("engine")
    entries = []
    for split, count, folder in (("train", N_TRAIN, "images"), ("test", N_TEST, "test_images")):
        (root / folder).mkdir()
        for seed in split_seeds(split, count):
            image, masks = scene(seed, size=96)
            name = f"{split}-{seed}.png"
            Image.fromarray(image).save(root / folder / name)
            entries.append((name, masks))
    good = (root / "images" / entries[0][0]).read_bytes()
    (root / "images" / "corrupt.png").write_bytes(good[: len(good) // 3])
    write_coco(str(root / "gt.json"), entries)
    torch.manual_seed(0)
    torch.save({"model": build_sam("tiny").state_dict()}, root / "tiny.pt")
    return root


@pytest.fixture()
def engine(engine_template, tmp_path) -> dict:
    """A fresh copy of the template with an empty store that knows the model; returns the paths and URLs."""
    from stores import Store
    from tasks.models import register_model

    root = tmp_path / "engine"
    shutil.copytree(engine_template, root)
    store_url = (root / "store").as_uri()
    register_model(Store(store_url), MODEL, "tiny", str(root / "tiny.pt"))
    return {
        "root": root,
        "store": store_url,
        "images": str(root / "images"),
        "test_images": str(root / "test_images"),
        "ground_truth": str(root / "gt.json"),
        "model": MODEL,
    }


@pytest.fixture()
def calibration_table():
    """A factory of hand-made calibration tables: ``calibration_table(predicted_iou, stability_score, best_iou)``
    (scalars or one value per candidate) gives one candidate per predicted IoU on image "x", each its own object
    (best_gt = its index), 100 px, boxes side by side (no NMS between them), in a 96 x 96 image."""
    import numpy as np
    import pandas as pd

    def make(predicted_iou, stability_score, best_iou) -> pd.DataFrame:
        n = len(predicted_iou)
        return pd.DataFrame(
            {
                "image_id": "x",
                "predicted_iou": np.asarray(predicted_iou, np.float32),
                "stability_score": np.float32(stability_score)
                if np.isscalar(stability_score)
                else stability_score,
                "area": 100,
                "image_area": 96 * 96,
                "x0": 2.0 * np.arange(n),
                "y0": 0.0,
                "x1": 2.0 * np.arange(n) + 1,
                "y1": 1.0,
                "best_iou": np.broadcast_to(np.asarray(best_iou, np.float32), (n,)),
                "best_gt": np.arange(n),
            }
        )

    return make
