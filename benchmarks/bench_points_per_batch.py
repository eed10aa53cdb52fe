"""Automatic masks on a CPU: how many grid points to decode together (``points_per_batch``).

The reference decodes 64 points at a time (192 masks: three per point), a size chosen for GPUs. On a CPU the
decoder's per-mask work (the two-way transformer over 1,024 image tokens, the upscaling to 128 x 128) ran faster
in smaller batches on this project's 2-core machine, most likely because they stay in cache. This runs the
embedded model's automatic mask generator from cached embeddings on held-out cell scenes with the demo's grid and
box NMS (flows.demo.DemoConfig) at each batch size, interleaved, and checks that every batch size gives the same
masks (count, and predicted IoU to float32 rounding).

    .venv/bin/python benchmarks/bench_points_per_batch.py [--images 4] [--repeats 3] [--threads 2]

Wall seconds an image (median over repeats) per batch size; the last line is the ratio of the fastest batch size
to the reference's 64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.demo import DemoConfig  # noqa: E402
from sam_core import defaults  # noqa: E402
from sam_core.automatic_mask_generator import AutomaticMaskGenerator  # noqa: E402
from sam_core.domains import domain_scene  # noqa: E402
from sam_core.embedded import load_embedded  # noqa: E402
from sam_core.predictor import SamPredictor  # noqa: E402
from sam_core.synthetic import split_seeds  # noqa: E402

BATCHES = (4, 8, 16, 32, defaults.POINTS_PER_BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="held-out cell scenes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo uses every core)")
    args = parser.parse_args()
    demo = DemoConfig()
    torch.set_num_threads(args.threads)
    model = load_embedded()
    predictor = SamPredictor(model)
    embeddings = []
    for seed in split_seeds("test", args.images):
        image, _ = domain_scene("cells", seed, 256)
        predictor.set_image(image)
        embeddings.append((predictor.get_image_embedding(), image.shape[:2]))
    seconds = {b: [] for b in BATCHES}
    masks = {}
    for _ in range(args.repeats):
        for batch in BATCHES:
            generator = AutomaticMaskGenerator(
                model,
                points_per_side=demo.points_per_side,
                points_per_batch=batch,
                box_nms_thresh=demo.box_nms_thresh,
                pred_iou_thresh=0.0,
                stability_score_thresh=0.0,
            )
            started = time.perf_counter()
            masks[batch] = [generator.generate_from_embedding(e, size) for e, size in embeddings]
            seconds[batch].append((time.perf_counter() - started) / len(embeddings))
    reference = masks[defaults.POINTS_PER_BATCH]
    for batch in BATCHES:
        same = all(
            len(ours) == len(ref)
            and all(
                abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4 for a, b in zip(ours, ref, strict=True)
            )
            for ours, ref in zip(masks[batch], reference, strict=True)
        )
        print(
            f"points_per_batch {batch:>3}: {statistics.median(seconds[batch]):.2f} s an image, "
            f"{sum(len(m) for m in masks[batch]) / len(embeddings):.1f} masks an image, "
            f"{'the same masks as' if same else 'OTHER MASKS THAN'} batch {defaults.POINTS_PER_BATCH}"
        )
    fastest = min(BATCHES, key=lambda b: statistics.median(seconds[b]))
    ratio = statistics.median(seconds[fastest]) / statistics.median(seconds[defaults.POINTS_PER_BATCH])
    print(f"time batch {fastest} / batch {defaults.POINTS_PER_BATCH}: {ratio:.2f}")


if __name__ == "__main__":
    main()
