"""What a narrower mask decoder would save the demo's retrains: one training step at several decoder widths.

A demo retrain step costs 1.1-1.3 s on this project's 2-core machine, most of it the mask decoder's 36 passes (12
masks, 3 prompts each) at SAM's width of 256. This builds the embedded model's config ("tiny_conv") at each width
in WIDTHS (the transformer's and the prompt encoder's dimension, the image encoder's output channels with it; the
decoder MLP and the IoU head scale alongside), all at random weights, and times the demo's retrain recipe
(flows.demo.RETRAIN_RECIPE, the image encoder tuned) on cell scenes, the widths' steps interleaved so that a
busy machine slows them alike.

    .venv/bin/python benchmarks/bench_decoder_width.py [--steps 6] [--threads 2]

Median wall seconds a step per width, the mask decoder's parameters, and the ratio of each width to 256. It says
nothing of how well a narrower model learns: that needs the embedded model retrained at that width.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.demo import RETRAIN_RECIPE  # noqa: E402
from sam_core import build  # noqa: E402
from sam_core.domains import domain_scene  # noqa: E402
from sam_core.synthetic import split_seeds  # noqa: E402
from sam_core.train import TrainConfig, Trainer  # noqa: E402

BASE = "tiny_conv"
WIDTHS = (256, 192, 128)


def config_at(width: int) -> str:
    """The name of BASE's config at decoder width ``width``, registered in build.CONFIGS for this process."""
    name = f"{BASE}_w{width}"
    build.CONFIGS[name] = build.at_decoder_width(build.CONFIGS[BASE], width)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per width (after 2 warm-up steps)")
    parser.add_argument("--images", type=int, default=8, help="cell scenes to train on")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (the demo trains on every core)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = [domain_scene("cells", seed, 256) for seed in split_seeds("train", args.images)]
    trainers = {}
    for width in WIDTHS:
        config = TrainConfig(model=config_at(width), steps=1000, log_every=0, seed=0, **RETRAIN_RECIPE)
        trainer = Trainer(config, scenes)
        trainer.step()
        trainer.step()
        trainers[width] = trainer
    seconds = {width: [] for width in WIDTHS}
    for _ in range(args.steps):
        for width, trainer in trainers.items():
            started = time.perf_counter()
            trainer.step()
            seconds[width].append(time.perf_counter() - started)
    widest = statistics.median(seconds[WIDTHS[0]])
    for width, trainer in trainers.items():
        params = sum(p.numel() for p in trainer.model.mask_decoder.parameters())
        step = statistics.median(seconds[width])
        print(
            f"width {width:>3}: {step:.2f} s a step, mask decoder {params / 1e6:.2f}M parameters, "
            f"ratio to width {WIDTHS[0]}: {step / widest:.2f}"
        )


if __name__ == "__main__":
    main()
