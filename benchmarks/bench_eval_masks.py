"""The held-out click evaluation: every ground-truth mask of an image against a fixed subset of them.

The demo scores 24 masks of each cell image (``DemoConfig.test_masks_per_image``) instead of all of them. This
measures what that saves and what it moves, with the embedded model on held-out cell scenes (the test split's seeds): process
CPU time of ``sam_core.evaluate.evaluate_interactive`` (one thread, so a busy neighbour changes little) and mIoU
after 1 and 5 clicks, all masks against the cap, runs interleaved.

    .venv/bin/python benchmarks/bench_eval_masks.py [--images 8] [--cap 24] [--repeats 2]

The last line is the CPU-time ratio capped / all (median over repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.domains import domain_scene  # noqa: E402
from sam_core.embedded import load_embedded  # noqa: E402
from sam_core.evaluate import evaluate_interactive  # noqa: E402
from sam_core.synthetic import split_seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="held-out cell scenes")
    parser.add_argument("--cap", type=int, default=24, help="masks scored an image")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenes = [domain_scene("cells", seed, 256) for seed in split_seeds("test", args.images)]
    model = load_embedded()
    seconds = {None: [], args.cap: []}
    figures = {}
    for _ in range(args.repeats):
        for cap in seconds:
            started = time.process_time()
            figures[cap] = evaluate_interactive(model, scenes, max_clicks=5, max_masks_per_image=cap)
            seconds[cap].append(time.process_time() - started)
    for cap, times in seconds.items():
        f = figures[cap]
        print(
            f"{'all' if cap is None else f'cap {cap}':>7}: {f['masks']} masks, "
            f"{statistics.median(times):.1f} CPU-s, mIoU@1 {f['miou@1_confident']:.3f}, "
            f"mIoU@5 {f['miou@5_confident']:.3f}"
        )
    ratio = statistics.median(seconds[args.cap]) / statistics.median(seconds[None])
    print(f"CPU time capped / all: {ratio:.2f}")


if __name__ == "__main__":
    main()
