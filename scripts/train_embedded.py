"""Reproduce the embedded default model (sam_core/weights/sam_tiny_synthetic.pt) with one command:

    .venv/bin/python scripts/train_embedded.py --out-dir /tmp/sam_embedded

Trains the tiny config from scratch on the synthetic train seeds with the interactive trainer, on one CPU
thread, writing a full-precision checkpoint every 25 steps (so a partial run is usable), then stores the final
weights as fp16 in sam_core/weights/ (``--install``). The config below is the one in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.train import TrainConfig, train  # noqa: E402

# Budget: about an hour of one shared CPU core. The paper's 8 + 2 extra passes cost 11 decoder runs per mask;
# here 2 correction clicks + 1 mask-only pass (4 runs) leave room for several times more images.
EMBEDDED_CONFIG = TrainConfig(
    model="tiny",
    steps=1000,
    images_per_step=1,
    masks_per_image=6,
    lr=8e-4,
    warmup_steps=100,
    min_lr_ratio=0.05,
    weight_decay=0.1,
    correction_points=2,
    no_point_iterations=1,
    box_probability=0.5,
    data_split="train",
    seed=0,
    checkpoint_every=25,
    log_every=5,
    metadata={"name": "sam_tiny_synthetic", "data": "sam_core.synthetic train seeds", "parent_version": None},
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the embedded tiny SAM on synthetic scenes.")
    parser.add_argument("--out-dir", default="/tmp/sam_embedded")
    parser.add_argument("--steps", type=int, default=EMBEDDED_CONFIG.steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reference-modules", action="store_true", help="build with segment_anything's modules"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(EMBEDDED_CONFIG.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = EMBEDDED_CONFIG
    config.steps = args.steps
    model = None
    if args.reference_modules:
        from sam_core.train import _reference_tiny

        model = _reference_tiny()
    out = Path(args.out_dir) / "checkpoint.pt"
    train(config, out=out, model=model)
    logging.info("done: %s", out)


if __name__ == "__main__":
    main()
