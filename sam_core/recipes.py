"""Training recipes as data: a recipe is a dataclass of settings whose defaults run (sam_core.train.TrainConfig,
sam_core.text_train.TextTrainConfig), and an experiment is a few overrides of it. The embedded model's recipe,
EMBEDDED_RECIPE, is here, where the script that trains it and the tests of what it relies on both read it.

The training scripts (scripts/train_embedded.py, scripts/train_text.py) start from one command line
(training_parser), take their overrides from it (``--set FIELD=VALUE``) and, when a run goes on under another
recipe than it started with, say which fields changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from sam_core.train import TrainConfig

# How the embedded model learns to answer clicks, and how every retrain of it goes on learning (flows.demo):
CLICK_TRAINING = {
    "masks_per_image": 12,
    # 3 decoder passes a mask: the first prompt, then 2 clicks on the shown mask's errors.
    "correction_points": 2,
    "no_point_iterations": 0,
    # The evaluation and the annotators click; boxes still get trained.
    "box_probability": 0.25,
    # BCE+dice 1:1 against the paper's focal+dice 20:1, the same recipe otherwise, two runs side by side from scratch
    # (validation confident / oracle mIoU@1, mIoU@5 at steps 150 and 200): BCE 0.254 / 0.349 / 0.451 and
    # 0.313 / 0.415 / 0.495, focal 0.098 / 0.110 / 0.142 and 0.239 / 0.280 / 0.305.
    "pixel_loss": "bce",
    "focal_weight": 1.0,
}
# The embedded model's recipe (scripts/train_embedded.py trains it). Each choice and the measurement behind it is in
# sam_core/weights/MODEL_CARD.md ("Recipe").
EMBEDDED_RECIPE = TrainConfig(
    # SAM's prompt encoder and mask decoder at width 128, not 256: a demo retrain step costs 0.57-0.59 of the time
    # (benchmarks/bench_decoder_width.py), which brought the demo from 785 s to 555 s, for held-out mIoU@1 / @5
    # 0.515 / 0.739 against 0.533 / 0.779 at 256 (4,800 steps against 6,100).
    model="tiny_conv_slim",
    steps=4_800,  # 2.7 h of wall time on 2 cores at width 128; the lr holds its peak until the last quarter
    images_per_step=2,
    **CLICK_TRAINING,
    lr=5e-4,
    warmup_steps=200,
    min_lr_ratio=0.05,
    decay_fraction=0.25,
    ema_decay=0.998,
    weight_decay=0.05,
    # Without it the masks were blobs of a fixed size around the click (validation oracle mIoU@1 flat at 0.48-0.50
    # over steps 500-700); from step 700 at 5.0 it rose 0.50 -> 0.62 by step 2,000 (not separated from the steps
    # themselves: one run, see MODEL_CARD.md's recipe changes).
    grouping_loss_weight=5.0,
    dice_weight=1.0,
    attention_init_gain=2.0,
    seed=0,
    checkpoint_every=50,
    log_every=10,
    metadata={"name": "sam_tiny_synthetic", "data": "sam_core.synthetic train seeds"},
)


def training_parser(doc: str, run_dir: Path, val_every: int) -> argparse.ArgumentParser:
    """The command line every training script starts from, each adding its own options: the run's folder, when
    to stop and to validate, threads and device, and the recipe's overrides (--set FIELD=VALUE, read by
    parse_overrides)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=run_dir)
    parser.add_argument(
        "--stop-at", type=int, default=None, help="stop at this step (the schedule is unchanged)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-every", type=int, default=val_every, help="steps between validations")
    parser.add_argument("--device", default="cpu")
    # "extend": a second --set adds to the first (with a plain nargs option the last one silently won, and a run
    # given `--set train_scenes=2000 --set val_scenes=150` trained on the default train_scenes).
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", help="override recipe fields"
    )
    return parser


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments of a training script, with torch's threads set and the log lines timed."""
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return args


def parse_overrides(recipe, pairs: list[str]) -> dict:
    """["key=value", ...] -> {key: value}, each value typed like ``recipe``'s field: a bool from 1/true/yes,
    "None" as None, a number as the field's type, anything else as text. A pair that is not FIELD=VALUE, an
    unknown field or a dict field ends the program (SystemExit) naming the fields."""
    fields = {f.name for f in dataclasses.fields(recipe)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields or isinstance(getattr(recipe, key), dict):
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(recipe, key)
        if isinstance(current, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif value == "None":
            out[key] = None
        elif isinstance(current, int | float):
            out[key] = type(current)(value)
        else:
            out[key] = value
    return out


def recipe_changes(before: dict, recipe) -> dict:
    """{field: [old, new]} for the fields of ``recipe`` that differ from ``before`` (a recipe as a dict: a
    checkpoint's "config"), metadata aside; a field the earlier recipe did not have yet counts as its default."""
    after = dataclasses.asdict(recipe)
    defaults = dataclasses.asdict(type(recipe)())
    old = {k: before.get(k, defaults.get(k)) for k in after}
    return {k: [old[k], v] for k, v in after.items() if k != "metadata" and _plain(old[k]) != _plain(v)}


def _plain(value):
    # A tuple setting and the same values as a list are one setting.
    return list(value) if isinstance(value, tuple) else value
