"""What a finished demo's stages labelled, and what its versions can find, by ground-truth level.

The synthetic scenes know every object's level (sam_core.synthetic.LEVELS: for cells, "whole" is a cell, "part" its
nucleus, "subpart" a nucleolus). This reads a demo's store (never writing it) and prints:

1. For each round's stage: its masks per image by the level of the ground-truth object each matches at
   ``--match-iou`` ("none": no object), and by source (human, model pre-fill, auto).
2. With ``--oracle N``: for each version the demo evaluated, on N held-out scenes, the fraction of each level's
   objects that some automatic candidate of the demo's grid (DemoConfig.points_per_side, cleaned as the demo
   cleans) matches at 0.5: the most any threshold could recall. ``--grid`` tries other grid densities.

    .venv/bin/python benchmarks/bench_demo_levels.py --demo demo_output
    .venv/bin/python benchmarks/bench_demo_levels.py --demo demo_output --oracle 8 --versions r2 --grid 16 32

The scenes are regenerated from the seed in each image's file name (tasks.demo_data writes ``<split>-<seed>.png``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.demo import DemoConfig, read_config  # noqa: E402
from sam_core.domains import make_domain_scene  # noqa: E402
from sam_core.mask_utils import binary_iou  # noqa: E402
from sam_core.synthetic import LEVELS, split_seeds  # noqa: E402
from stores import Store  # noqa: E402
from tasks.calibrate import CalibrationSettings, candidate_table  # noqa: E402
from tasks.models import load_model  # noqa: E402
from tasks.records import decode_rows  # noqa: E402

SEED_IN_NAME = re.compile(r"-(\d+)\.png$")


def scene_of(uri: str, domain: str):
    """The synthetic scene an image of the demo was written from (its seed is in the file name)."""
    found = SEED_IN_NAME.search(uri)
    if found is None:
        raise ValueError(f"{uri} is not a demo image (<split>-<seed>.png): its scene cannot be regenerated")
    return make_domain_scene(domain, int(found.group(1)))


def stage_levels(store: Store, domain: str, match_iou: float) -> list[dict]:
    """One row per (round, stage): images, masks per image by source and by matched level ("none": no match)."""
    uris = store.images().set_index("image_id")["uri"]
    rows = []
    for (round, stage), group in store.masks().groupby(["round", "stage"], sort=True):
        levels: Counter = Counter()
        for image_id, masks in group.groupby("image_id"):
            scene = scene_of(uris.loc[image_id], domain)
            for mask in decode_rows(masks):
                ious = [binary_iou(mask, gt) for gt in scene.masks]
                best = int(np.argmax(ious)) if ious else -1
                levels[LEVELS[scene.levels[best]] if best >= 0 and ious[best] >= match_iou else "none"] += 1
        n = group["image_id"].nunique()
        rows.append(
            {
                "round": int(round),
                "stage": stage,
                "images": n,
                "by_source": {k: v / n for k, v in group["source"].value_counts().items()},
                "by_level": {k: levels[k] / n for k in (*LEVELS, "none")},
            }
        )
    return rows


def oracle_by_level(model, scenes: list, points_per_side: int, config: DemoConfig) -> dict[str, float]:
    """Fraction of each level's objects in ``scenes`` that some automatic candidate matches at IoU 0.5."""
    settings = CalibrationSettings(
        ground_truth="unused",
        points_per_side=points_per_side,
        points_per_batch=config.points_per_batch,
        min_mask_region_area=config.min_mask_region_area,
    )
    samples = [(str(i), s.image, s.masks) for i, s in enumerate(scenes)]
    candidates = candidate_table(model, samples, settings)
    matched = candidates[candidates["best_iou"] >= 0.5]
    found = set(zip(matched["image_id"], matched["best_gt"], strict=True))
    totals: Counter = Counter()
    hits: Counter = Counter()
    for i, scene in enumerate(scenes):
        for j, level in enumerate(scene.levels):
            totals[LEVELS[level]] += 1
            hits[LEVELS[level]] += (str(i), j) in found
    return {level: hits[level] / totals[level] for level in LEVELS if totals[level]} | {
        "all": sum(hits.values()) / max(sum(totals.values()), 1)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo's output folder")
    parser.add_argument("--match-iou", type=float, default=0.5)
    parser.add_argument(
        "--oracle", type=int, default=0, help="held-out scenes to measure candidate coverage on (0: skip)"
    )
    parser.add_argument("--versions", nargs="*", help="versions for --oracle (default: every one evaluated)")
    parser.add_argument(
        "--grid", type=int, nargs="*", help="points per side for --oracle (default: the demo's)"
    )
    args = parser.parse_args()
    figures_path = args.demo / "figures.json"
    if not figures_path.is_file():
        raise SystemExit(f"{args.demo} is not a finished demo: it has no figures.json")
    config = read_config(args.demo) or DemoConfig()  # a demo from before config.json ran at the defaults
    store = Store((args.demo / "engine" / "store").resolve().as_uri())
    print(f"masks per image by the level of the object they match at IoU {args.match_iou}")
    for row in stage_levels(store, config.domain, args.match_iou):
        source = ", ".join(f"{k} {v:.1f}" for k, v in row["by_source"].items())
        level = ", ".join(f"{k} {v:.1f}" for k, v in row["by_level"].items())
        print(f"  round {row['round']} {row['stage']:>15} ({row['images']} images): {level}  [{source}]")
    if not args.oracle:
        return
    evaluated = list(
        dict.fromkeys(r["evaluated_model_version"] for r in json.loads(figures_path.read_text()))
    )
    versions = args.versions or evaluated
    # Test scenes past the demo's own: held out from every stage and calibration.
    seeds = split_seeds("test", config.test_images + args.oracle)[config.test_images :]
    scenes = [make_domain_scene(config.domain, seed) for seed in seeds]
    print(f"objects some automatic candidate matches at IoU 0.5, on {len(scenes)} held-out scenes")
    for version in versions:
        model = load_model(store, version)
        for grid in args.grid or [config.points_per_side]:
            found = oracle_by_level(model, scenes, grid, config)
            print(f"  {version:>10} grid {grid:>3}: " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))


if __name__ == "__main__":
    main()
