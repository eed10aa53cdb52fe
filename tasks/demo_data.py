"""Synthetic images for the demo and tests: PNG files, a COCO file of their ground truth, a corrupt file.

Scenes come from a synthetic domain (``sam_core.domains``) with its fixed seed splits: the engine's images are the
first train seeds, evaluation uses the test seeds and calibration the validation seeds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sam_core.domains import domain_scene
from sam_core.synthetic import split_seeds
from tasks.ground_truth import write_coco


def write_synthetic_images(
    root: Path,
    train: int,
    test: int,
    corrupt: int = 1,
    size: int = 256,
    val: int = 0,
    domain: str = "shapes",
) -> dict:
    """Write ``train``, ``test`` and ``val`` scenes of ``domain`` ("shapes", or "cells" for microscopy-like
    images) under ``root``/images/<split>, with ``corrupt`` truncated PNGs among the train images, and all their
    ground truth in one COCO file. The validation scenes are for calibrating automatic-mask thresholds
    (tasks.calibrate).

    Returns {"<split>_dir" for each split, "ground_truth" (COCO JSON path)}.
    """
    root = Path(root)
    entries = []
    seeds = {
        "train": split_seeds("train", train),
        "test": split_seeds("test", test),
        "val": split_seeds("val", val),
    }
    dirs = {split: root / "images" / split for split in seeds}
    for split, numbers in seeds.items():
        dirs[split].mkdir(parents=True, exist_ok=True)
        for number in numbers:
            image, masks = domain_scene(domain, number, size)
            name = f"{split}-{number:07d}.png"
            Image.fromarray(image).save(dirs[split] / name)
            entries.append((name, masks))
    for i in range(corrupt):
        whole = (dirs["train"] / entries[0][0]).read_bytes()
        (dirs["train"] / f"corrupt-{i}.png").write_bytes(whole[: len(whole) // 4])
    ground_truth = root / "ground_truth.json"
    write_coco(str(ground_truth), entries)
    return {
        **{f"{split}_dir": str(path) for split, path in dirs.items()},
        "ground_truth": str(ground_truth),
    }
