"""Training speed of the tiny config on this CPU: steps/s and images/s of the paper's 11-pass interactive step,
against a single-prompt step (one decoder pass per mask) measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--steps 4] [--masks 8] [--threads 1]

The last line is the ratio: seconds per 11-pass step / seconds per single-prompt step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.train import TrainConfig, Trainer  # noqa: E402
from sam_core.train_data import SyntheticDataset  # noqa: E402


def seconds_per_step(config: TrainConfig, dataset, steps: int, warmup: int = 1) -> float:
    torch.manual_seed(0)
    trainer = Trainer(config, dataset)
    for _ in range(warmup):
        trainer.step()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--masks", type=int, default=8, help="masks per image (all scenes used have at least this)"
    )
    parser.add_argument("--images", type=int, default=1, help="images per step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Scenes with enough masks so every step trains exactly --masks masks: the two configs do equal work per mask.
    pool = SyntheticDataset("train", count=400)
    dataset = [pool[i] for i in range(len(pool)) if len(pool[i][1]) >= args.masks][:32]
    common = dict(steps=10_000, images_per_step=args.images, masks_per_image=args.masks, log_every=0)
    single = seconds_per_step(
        TrainConfig(**common, correction_points=0, no_point_iterations=0, box_probability=0.0),
        dataset,
        args.steps,
    )
    full = seconds_per_step(TrainConfig(**common), dataset, args.steps)
    for name, s in (("single-prompt step (1 pass)", single), ("interactive step (11 passes)", full)):
        print(
            f"{name:<30} {s:7.2f} s/step  {1 / s:6.3f} steps/s  {args.images / s:6.3f} images/s  "
            f"{args.images * args.masks / s:6.2f} masks/s  (tiny, {args.masks} masks/image, {args.threads} thread)"
        )
    print(f"11-pass / single-prompt step time ratio: {full / single:.2f}")


if __name__ == "__main__":
    main()
