"""Synthetic images for the demo and tests: PNG files, a COCO file of their ground truth, a corrupt file.

Scenes come from sam_core.synthetic with its fixed seed splits: the engine's images are the first train seeds,
the seed model's training set is taken far away in the train range (so no round ever sees a seed scene), and
evaluation uses the test seeds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SEED_SET_START = 500_000  # seed-model scenes: train seeds from here on, disjoint from the engine's images


def write_synthetic_images(root: Path, train: int, test: int, corrupt: int = 1, size: int = 256) -> dict:
    """Write ``train`` + ``test`` scenes (and ``corrupt`` truncated PNGs among the train images) under ``root``.

    Returns {"train_dir", "test_dir", "ground_truth" (COCO JSON path), "seed_scenes" (seeds for the seed model),
    "embedded_available" (whether the shipped model's weights exist)}.
    """
    from sam_core.embedded import EMBEDDED_CHECKPOINT
    from sam_core.synthetic import scene, split_seeds
    from tasks.ground_truth import write_coco

    root = Path(root)
    entries = []
    dirs = {"train": root / "images" / "train", "test": root / "images" / "test"}
    for split, count in (("train", train), ("test", test)):
        dirs[split].mkdir(parents=True, exist_ok=True)
        for seed in split_seeds(split, count):
            image, masks = scene(seed, size)
            name = f"{split}-{seed:07d}.png"
            Image.fromarray(image).save(dirs[split] / name)
            entries.append((name, masks))
    for i in range(corrupt):
        whole = (dirs["train"] / entries[0][0]).read_bytes()
        (dirs["train"] / f"corrupt-{i}.png").write_bytes(whole[: len(whole) // 4])
    ground_truth = root / "ground_truth.json"
    write_coco(str(ground_truth), entries)
    return {
        "train_dir": str(dirs["train"]),
        "test_dir": str(dirs["test"]),
        "ground_truth": str(ground_truth),
        "seed_scenes": list(range(SEED_SET_START, SEED_SET_START + 512)),
        "embedded_available": EMBEDDED_CHECKPOINT.exists(),
    }
