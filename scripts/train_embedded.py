"""Reproduce the embedded default model (sam_core/weights/sam_tiny_synthetic.pt) with one command:

    .venv/bin/python scripts/train_embedded.py --out-dir /tmp/sam_embedded --install

Trains the tiny config from scratch on the synthetic train seeds with the interactive trainer, on one CPU
thread, in the phases below (the second starts from the first's weights with a fresh optimizer), writing a
full-precision checkpoint every 25 steps so a partial run is usable. ``--install`` then evaluates the result on
the held-out test seeds and writes the fp16 weights and MODEL_CARD.md into sam_core/weights/.
``--install-from CKPT`` does only that last part for an existing checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.train import TrainConfig, train  # noqa: E402

META = {"name": "sam_tiny_synthetic", "data": "sam_core.synthetic train seeds", "parent_version": None}

# Budget: about an hour of one CPU core shared with four other jobs. From scratch, the paper's 20:1 focal:dice
# makes "predict nothing" a deep plateau (an imprecise positive costs more focal loss than it saves dice), and at
# full lr the encoder reaches it by flattening its features. So phases 1-2 train the prompt encoder and decoder on
# the frozen (random) encoder, then phase 3 trains everything with the encoder at 0.1x lr; all at focal:dice 1:1
# (a switch to 20:1 after phase 1 pushed the masks straight back to empty). Both use 3 decoder
# passes per mask (first prompt, 1 correction click, 1 mask-only pass) and 4 masks per image: the paper's 11
# passes (TrainConfig's default) would cost 3x per mask, and images are what this budget lacks.
_COMMON = dict(
    model="tiny",
    images_per_step=1,
    masks_per_image=4,
    correction_points=1,
    no_point_iterations=1,
    box_probability=0.5,
    checkpoint_every=25,
    log_every=5,
)
# What phases 4-7 share: one image a step, no mask-only passes, cosine decay to 0.1 x lr, focal:dice 1:1.
_PHASES_4_TO_7 = dict(
    model="tiny",
    images_per_step=1,
    no_point_iterations=0,
    min_lr_ratio=0.1,
    focal_weight=1.0,
)
PHASES: list[tuple[TrainConfig, int]] = [
    (
        TrainConfig(
            **_COMMON,
            steps=100,
            lr=8e-4,
            warmup_steps=20,
            min_lr_ratio=1.0,  # constant after warmup: the last phase does the decay
            focal_weight=1.0,
            freeze_image_encoder=True,  # decoder first: it learns to read the random encoder's spatial features
            seed=0,
            metadata={**META, "phase": 1},
        ),
        100,  # steps actually run of this phase's schedule
    ),
    (
        TrainConfig(
            **_COMMON,
            steps=150,
            lr=8e-4,
            warmup_steps=5,
            min_lr_ratio=1.0,
            focal_weight=1.0,
            freeze_image_encoder=True,
            seed=1,
            metadata={**META, "phase": 2},
        ),
        150,
    ),
    (
        TrainConfig(
            **_COMMON,
            steps=800,
            lr=2e-4,  # at 8e-4 (the paper's lr for batches of 256 images) 4 masks a step kept falling back to empty
            warmup_steps=20,
            min_lr_ratio=0.05,
            focal_weight=1.0,
            encoder_lr_scale=0.25,
            seed=2,
            metadata={**META, "phase": 3},
        ),
        300,  # the time budget ran out here; the schedule still spans 800 steps
    ),
    (
        # Phase 4 fine-tunes the decoder on frozen, cached embeddings with every mask of a scene (up to 16) in one
        # batched decoder pass, so each step compares many prompts on the same image: the first three phases
        # (4 masks a step) had learnt a prompt-independent foreground map. 300 scenes are reused so each
        # embedding is computed once (encoding is about a third of a step on this CPU).
        TrainConfig(
            **_PHASES_4_TO_7,
            steps=400,
            masks_per_image=16,
            dataset_size=300,
            correction_points=1,
            box_probability=0.2,
            lr=3e-4,
            warmup_steps=5,
            cache_embeddings=True,
            seed=11,
            checkpoint_every=25,
            log_every=5,
            metadata={**META, "phase": 4},
        ),
        275,  # the time budget ran out here; the schedule spans 400 steps
    ),
    (
        # Phase 5 keeps phase 4's image encoder (frozen; embeddings of 3,000 scenes cached) and trains a fresh prompt
        # encoder and mask decoder with the location-aware attention init (sam_core.train.locality_init): phases
        # 1-4's decoder had learnt a prompt-independent foreground map and did not unlearn it.
        TrainConfig(
            **_PHASES_4_TO_7,
            steps=3000,
            masks_per_image=16,
            dataset_size=3000,
            correction_points=1,
            box_probability=0.5,
            lr=5e-4,
            warmup_steps=50,
            cache_embeddings=True,
            fresh_decoder=True,
            attention_init_gain=2.0,
            seed=12,
            checkpoint_every=100,
            log_every=25,
            metadata={**META, "phase": 5},
        ),
        2500,  # stopped here to leave the session time for the demo and CI; the schedule spans 3000 steps
    ),
    (
        # Phase 6 trains everything end to end from phase 5 (the encoder at half the lr): phase 5's decoder
        # follows the click, and what limits it is phase 4's encoder (about 550 steps from random, then frozen).
        # New scenes every step (no cache), since the encoder's output changes as it trains.
        TrainConfig(
            **_PHASES_4_TO_7,
            steps=2000,
            masks_per_image=16,
            correction_points=1,
            box_probability=0.5,
            lr=2e-4,
            warmup_steps=100,
            encoder_lr_scale=0.5,
            seed=13,
            checkpoint_every=100,
            log_every=25,
            metadata={**META, "phase": 6},
        ),
        2000,
    ),
    (
        # Phase 7 freezes phase 6's encoder again (new scenes every step) and trains the decoder with
        # 3 correction clicks a mask instead of 1: phases 4-6 showed the decoder at most two points, and the
        # evaluation clicks up to 20 times.
        TrainConfig(
            **_PHASES_4_TO_7,
            steps=600,
            masks_per_image=8,
            correction_points=3,
            box_probability=0.5,
            lr=2e-4,
            warmup_steps=25,
            freeze_image_encoder=True,
            seed=14,
            checkpoint_every=50,
            log_every=25,
            metadata={**META, "phase": 7},
        ),
        600,
    ),
]


def run_phases(out_dir: Path, first_phase: int = 1) -> Path:
    """Train the phases in order; returns the last phase's checkpoint path."""
    out = out_dir / "phase0.pt"
    for number, (config, stop_after) in enumerate(PHASES, start=1):
        previous, out = out, out_dir / f"phase{number}.pt"
        if number < first_phase:
            continue
        config = copy.deepcopy(config)
        if number > 1:
            config.init_checkpoint = str(previous)
        torch.manual_seed(config.seed)
        logging.info("phase %d: %s (stop after %d)", number, config, stop_after)
        train(config, out=out, stop_after=stop_after)
    return out


def install(checkpoint: Path, scenes: int, max_clicks: int) -> dict:
    """Evaluate ``checkpoint`` on the held-out test seeds; write fp16 weights + MODEL_CARD.md to sam_core/weights."""
    from sam_core.embedded import EMBEDDED_CHECKPOINT, load_weights, read_checkpoint
    from sam_core.evaluate import evaluate_interactive, format_table
    from sam_core.train import build_model
    from sam_core.train_data import SyntheticDataset

    ckpt = read_checkpoint(checkpoint)
    model = build_model("tiny")
    load_weights(model, ckpt)
    started = time.monotonic()
    metrics = evaluate_interactive(model, SyntheticDataset("test", count=scenes), max_clicks=max_clicks)
    eval_seconds = time.monotonic() - started
    table = format_table(metrics)
    print(table)
    # Steps and wall time per phase: from each phase's checkpoint in the out dir, and for the phases before the
    # first one rerun here, from the "phases" the checkpoint they started from recorded (when installed).
    recorded = {}
    for number in range(1, len(PHASES) + 1):
        path = checkpoint.parent / f"phase{number}.pt"
        if path.exists():
            meta = read_checkpoint(path)["metadata"]
            for earlier in meta.get("phases", []):
                recorded.setdefault(earlier["phase"], earlier)
            if meta.get("phase") == number:
                recorded[number] = {
                    "phase": number,
                    "steps": meta["steps"],
                    "wall_seconds": meta["wall_seconds"],
                }
    phases = [recorded[number] for number in sorted(recorded)]
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    metadata = {
        **ckpt["metadata"],
        "metrics": metrics,
        "phases": phases,
        "eval": {"split": "test", "scenes": scenes},
    }
    EMBEDDED_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": half, "config": ckpt["config"], "metadata": metadata}, EMBEDDED_CHECKPOINT)
    card = _model_card(ckpt["config"], phases, table, metrics, scenes, max_clicks, eval_seconds)
    (EMBEDDED_CHECKPOINT.parent / "MODEL_CARD.md").write_text(card)
    print(f"installed {EMBEDDED_CHECKPOINT} ({EMBEDDED_CHECKPOINT.stat().st_size / 1e6:.1f} MB)")
    return metrics


BELOW_TARGET = """Below target. Phases 1-4 had learnt a prompt-independent
"objectness" map: over an image's objects their masks had the same area to within 2-5% whatever was clicked,
so one click scored about the IoU of the prompted instance with all foreground (test mIoU@1 0.101, mIoU@5 0.106
on 20 scenes), and more clicks did not help. Phase 5's fresh decoder with the location-aware attention init
follows the click (test mIoU@1 0.322, oracle 0.483, mIoU@5 0.475). Phase 6 then trained the encoder end to end
(validation mIoU@1 / @5 on 10 scenes, 5 clicks: 0.299 / 0.416 after phase 5, 0.388 / 0.536 after phase 6) and
phase 7 the decoder with more clicks (0.402 / 0.587); at phase 7's peak lr the same figures dipped to 0.313 /
0.525 before its decay brought them back. Two things limit the model now. The budget: about 6,000 steps of one
image each, against SAM's 90k steps of 256 images (phase 6's figures were flat over its last 800 steps, 0.391 /
0.540 at step 1,200, as its lr decayed; a longer schedule at full lr is the next thing to try). And
the IoU head: its predictions barely vary (std 0.05 over the three masks of the first clicks on 10 validation
scenes, correlation 0.35 with their true IoU; 7% of its first layer's ReLU inputs are positive), so the
"confident" mask is often not the best one (mIoU@1 confident against oracle in the table). In two 150-step trials
on phase 6's weights at step 600, re-initialising the head revived its units but not the spread, and a 10x IoU
loss weight did not help either; neither is in the recipe. Use the official
checkpoints (`build_sam("vit_b", checkpoint=...)`) for real work; this model exists so that every flow, test and
demo runs offline."""


def _model_card(config, phases, table, metrics, scenes, max_clicks, eval_seconds) -> str:
    total_steps = sum(p["steps"] for p in phases)
    total_seconds = sum(p["wall_seconds"] for p in phases)
    phase_lines = "\n".join(
        f"| {number} | {stop} of {c.steps} | {c.masks_per_image} | {1 + c.correction_points + c.no_point_iterations} "
        f"| {c.lr:g} | {c.warmup_steps} | {c.focal_weight:g}:{c.dice_weight:g} "
        f"| {'frozen' if c.freeze_image_encoder or c.cache_embeddings else f'{c.encoder_lr_scale:g}x lr'} "
        f"| {c.seed} |"
        for number, (c, stop) in enumerate(PHASES, start=1)
    )
    miou1 = max(metrics["miou@1_confident"], metrics["miou@1_oracle"])
    numbers = {p["phase"] for p in phases}
    # The installed model's phases 1-3 ran before checkpoints recorded their phase; their figures are these.
    unrecorded = (
        "" if 1 in numbers else ", plus phases 1-3 (550 steps in 23 min, not recorded in checkpoints)"
    )
    return f"""# Model card: sam_tiny_synthetic (the embedded default)

`sam_core.embedded.load_embedded()` loads it; `sam_tiny_synthetic.pt` holds fp16 weights (loaded as fp32),
the training config and metadata (metrics, phases).

## Model
SAM architecture, "tiny" config: 256 px input, ViT patch 8, embed 192, depth 6, 6 heads, global attention in
blocks 2 and 5, window 8; 32x32x256 image embedding; prompt encoder and two-way mask decoder at dim 256
(depth 2, MLP 1024, 8 heads); 128x128 low-res masks. About 6.6 M parameters. Trained from scratch (no
pre-trained encoder: none can be downloaded here).

## Data
`sam_core.synthetic`: procedurally generated 256x256 scenes (textured backgrounds, 2-5 occluding objects with
parts and subparts, every level an instance), train seeds 0..999,999, drawn at random. Evaluated on the held-out
test seeds 2,000,000.. ({scenes} scenes, every mask of at least 16 px).

## Training
Interactive trainer `sam_core.train`: first prompt a positive point or a noisy box (at equal odds; 20% boxes
in phase 4), then correction clicks from the error region with the previous logits as mask prompt, min loss over
the 3 outputs of a single point, MSE IoU head, AdamW (weight decay 0.1), warmup, cosine decay. One image per step, on one CPU
thread of a 2-core machine shared with four other jobs: phases 1-3 take 4 of its masks, phase 4 (the decoder on
frozen, cached embeddings of the first 300 train scenes, `dataset_size`) all of them (up to 16) in one batched
decoder pass with 2 passes per mask (first prompt, 1 correction click). Phase 5 (two threads of a 2-core machine
shared with the project's other work) keeps phase 4's image encoder, frozen, and trains a *fresh* prompt encoder and
mask decoder (`fresh_decoder`) with the location-aware attention init (`attention_init_gain`, see below) on cached
embeddings of 3,000 train scenes. Phase 6 then trains everything end to end from phase 5 (encoder at half the lr,
a new scene every step), and phase 7 the decoder alone on phase 6's frozen encoder with 3 correction clicks a
mask (4 passes), since phases 4-6 never showed the decoder more than two points.

| phase | steps run | masks/image | passes/mask | lr | warmup | focal:dice | encoder | seed |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{phase_lines}

Total: {total_steps} steps in {total_seconds / 60:.0f} min wall time (contended CPU) for phases
{", ".join(str(p["phase"]) for p in phases)}{unrecorded}. Each phase starts from the previous one's weights with a
fresh optimizer.

Deviations from the paper, and why (each is a `TrainConfig` field; the defaults are the paper's):
- 2-4 decoder passes per mask instead of 11 (the "passes/mask" column: phases 1-3 first prompt, 1 correction
  click and 1 mask-only pass; 4-6 first prompt and 1 correction; 7 first prompt and 3 corrections): an 11-pass
  step costs 5.4x a single-prompt step (`benchmarks/bench_train.py`) and this budget is short of images, not
  passes. Phase 7 (3 corrections) raised validation mIoU@5 from 0.536 to 0.587 (see Metrics); whether the
  extra clicks or simply more decoder steps did it was not separated.
- focal:dice 1:1 instead of 20:1. From scratch, 20:1 makes "predict nothing" a deep plateau: an imprecise
  positive costs more focal loss than it saves dice. Switching to 20:1 once masks had appeared pushed them back
  to empty within 5 steps.
- The image encoder is frozen (at its random initialisation) for the first 250 steps and then trained at 0.25x
  lr: at full lr it reached the plateau by flattening its features (spatial std of the embedding fell from 0.55
  to 0.09 of its total std within 75 steps). No gradient clipping (a max norm of 1.0 stalled training).
- lr 2e-4 in the last phase: the paper's 8e-4 is for batches of 256 images x 64 masks; with 4 masks a step it
  kept knocking the model back to empty masks (mean IoU fell from 0.12 to 0.00 over 150 steps).
- Tried in this session and dropped (each from scratch, frozen random encoder, 16 masks a step, 100-300 steps
  on a CPU shared with load average 5-8): focal:dice 1:1 stayed at empty masks (train IoU 0.00 after 100 steps);
  dice only made masks appear within 20 steps but saturated the logits (std ~27) and, after 150 steps, scored
  test mIoU@1 0.056 (10 scenes), below this model; attention projections initialised tied (q = k, so a click's
  positional encoding attends to its own location) made no measurable difference in 100 steps.
- Phase 5's fresh decoder starts with the q and k projections of every prompt/image cross-attention tied
  (`sam_core.train.locality_init`: one orthogonal matrix x 2 for both), so a click's positional encoding
  attends to its own cell from the first step; only the init differs from SAM, not the architecture. With the
  default init, phases 1-4's decoder ignored the click: over the objects of a validation image its masks had
  the same area to within 2-5% (coefficient of variation), whatever was clicked. On a toy task (a disk around
  a click on a blank image, 16 clicks a step) the default init reached IoU 0.00 in 150 steps and the tied init
  0.82 in 100. The earlier "tied" trial above tied only one direction at the default scale.
- A phase may stop before its schedule's last step (the "steps run" column) when the time budget ran out.

## Metrics (held-out test seeds, `python -m sam_core.evaluate --split test --count {scenes}`)
Clicks as in the paper's protocol; "confident" keeps the first click's highest-predicted-IoU mask of three,
"oracle" the best of three; NoC with a budget of {max_clicks} clicks (evaluation took {eval_seconds:.0f} s).

```
{table}
```

Targets were mIoU@1 >= 0.75 and mIoU@5 >= 0.90. Reached: mIoU@1 {miou1:.3f} (best choice),
mIoU@5 {metrics["miou@5_confident"]:.3f}. {"Targets met." if miou1 >= 0.75 and metrics["miou@5_confident"] >= 0.90 else BELOW_TARGET}

## Reproduce
```
.venv/bin/python scripts/train_embedded.py --out-dir /tmp/sam_embedded --install
```
Single-threaded CPU training is deterministic given the seeds (phases 5-7 ran on 2 threads, which can reorder
float sums). The installed model's phase 4 started from the previous embedded model's fp16 weights (phases 1-3
as in the table), not a fresh phase3.pt, phase 5 from the fp16 weights of phase 4 (only its image encoder
is kept) and phase 6 from the fp16 weights of phase 5, so a rerun matches up to that rounding. `--first-phase N`
with the checkpoint of phase N-1 at OUT_DIR/phase{{N-1}}.pt reruns phases N and later: phases 6-7 of this model ran as
`--first-phase 6 --threads 2` with the previous `sam_tiny_synthetic.pt` copied to OUT_DIR/phase5.pt
(5,300 s on a 2-core machine).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the embedded tiny SAM on synthetic scenes.")
    parser.add_argument("--out-dir", default="/tmp/sam_embedded")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--first-phase", type=int, default=1, help="resume: skip earlier (finished) phases")
    parser.add_argument("--install", action="store_true", help="evaluate and install into sam_core/weights")
    parser.add_argument("--install-from", default=None, help="only install this checkpoint")
    parser.add_argument("--eval-scenes", type=int, default=30)
    parser.add_argument("--max-clicks", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.install_from:
        install(Path(args.install_from), args.eval_scenes, args.max_clicks)
        return
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    final = run_phases(out_dir, args.first_phase)
    logging.info("trained: %s in %.0f s", final, time.monotonic() - started)
    if args.install:
        install(final, args.eval_scenes, args.max_clicks)


if __name__ == "__main__":
    main()
