"""Train the embedded default model (sam_core/weights/sam_tiny_synthetic.pt): one recipe, resumable at any step.

    .venv/bin/python scripts/train_embedded.py --run-dir ~/.cache/sam-engine/embedded --hours 2 > train.log 2>&1 &
    .venv/bin/python scripts/train_embedded.py --install-from ~/.cache/sam-engine/embedded/best.pt

The run directory holds ``state.pt`` (weights, optimizer, moving average, step, random generators: written every
``checkpoint_every`` steps and on stop, atomically), ``best.pt`` (the moving-average weights that scored best on
the validation scenes so far, with the validation curve) and ``curve.jsonl`` (one line per validation). Run the
same command again and it goes on from ``state.pt``; with no state there it starts from the installed weights'
recorded step when ``--from-installed`` is given (the optimizer starts afresh), else from scratch.
``--install-from`` scores a checkpoint on the held-out test scenes (interactive clicks, automatic masks at the
paper's thresholds, the IoU head's reliability), writes its fp16 weights with every figure into sam_core/weights
and regenerates MODEL_CARD.md from what the checkpoint records. ``--card`` regenerates only the card.

On a GPU: ``--device cuda --bf16 --data-workers 8`` (autocast to bfloat16; the weights and optimizer stay float32;
the workers draw the scenes ahead). scripts/gpu_session.py is the prepared run for a lent GPU machine.
Experiments are overrides of the recipe, e.g. ``--set pixel_loss=focal focal_weight=20 steps=300``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.checkpoint import atomic_save, config_name, load_weights, read_checkpoint  # noqa: E402
from sam_core.embedded import EMBEDDED_CHECKPOINT  # noqa: E402
from sam_core.evaluate import (  # noqa: E402
    evaluate_automatic,
    evaluate_interactive,
    format_table,
    iou_head_reliability,
)
from sam_core.recipes import (  # noqa: E402
    EMBEDDED_RECIPE,
    parse_overrides,
    parse_training_args,
    recipe_changes,
    training_parser,
)
from sam_core.synthetic import scene, split_seeds  # noqa: E402
from sam_core.train import TrainConfig, Trainer, build_model  # noqa: E402

log = logging.getLogger("train_embedded")

VAL_SCENES = 16
VAL_CLICKS = 5
MIN_AREA = 30  # the evaluator's smallest scored mask, in pixels
TEST_SCENES = 50
AUTO_SCENES = 20


def validation_score(metrics: dict) -> float:
    """One number to rank checkpoints: the three floors of the model's targets, summed."""
    return metrics["miou@1_confident"] + metrics["miou@1_oracle"] + metrics[f"miou@{VAL_CLICKS}_confident"]


def validate(trainer: Trainer, scenes: list) -> dict:
    """Interactive mIoU of the moving-average weights on the validation scenes (up to VAL_CLICKS clicks)."""
    model = build_model(trainer.config.model)
    model.load_state_dict({k: v.cpu() for k, v in trainer.weights().items()})
    return evaluate_interactive(model, scenes, max_clicks=VAL_CLICKS, min_area=MIN_AREA)


def run(
    run_dir: Path,
    recipe: TrainConfig,
    hours: float | None,
    val_every: int,
    from_installed: bool,
    device: str,
    bf16: bool,
    stop_at: int | None = None,
    val_scenes: int = VAL_SCENES,
    data_workers: int = 0,
) -> Path:
    """Train (or go on training) until the recipe's last step, ``stop_at`` or ``hours`` of wall time; returns
    best.pt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, best_path, curve_path = run_dir / "state.pt", run_dir / "best.pt", run_dir / "curve.jsonl"
    recipe = dataclasses.replace(
        recipe, metadata={**recipe.metadata, "threads": torch.get_num_threads(), "device": device}
    )
    trainer = Trainer(recipe, device=device, data_workers=data_workers)
    changes_path = run_dir / "changes.jsonl"
    segments_path = run_dir / "segments.jsonl"  # where each stretch of the run trained (the model card says)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        trainer.restore(state)
        log.info(
            "resumed %s at step %d (%.0f s trained so far)", state_path, trainer.step_index, state["seconds"]
        )
        changed = recipe_changes(state["config"], recipe)
        if changed:  # a run that goes on under another recipe says so, and its checkpoints carry the record
            with changes_path.open("a") as f:
                f.write(json.dumps({"step": trainer.step_index, "fields": changed}) + "\n")
            log.info("recipe changed at step %d: %s", trainer.step_index, changed)
    elif from_installed:
        installed = read_checkpoint(EMBEDDED_CHECKPOINT)
        trainer.model.load_state_dict(installed["model"])
        if trainer.ema is not None:
            trainer.ema = {k: v.to(device).clone() for k, v in installed["model"].items() if k in trainer.ema}
        trainer.step_index = int(installed["metadata"].get("steps", 0))
        trainer.optimizer_start = trainer.step_index  # a fresh optimizer warms up again (lr_at)
        trainer.seconds_before = float(installed["metadata"].get("wall_seconds", 0.0))
        # The run goes on where the installed one left off, so its curve (against CPU hours) and its recipe
        # changes go on too: the next best.pt, and the model card made from it, carry the whole history.
        if not curve_path.exists():
            curve_path.write_text(
                "".join(json.dumps(row) + "\n" for row in installed["metadata"].get("curve", []))
            )
        if not changes_path.exists():
            earlier = installed["metadata"].get("recipe_changes", [])
            changes_path.write_text("".join(json.dumps(row) + "\n" for row in earlier))
        if not segments_path.exists():
            segments_path.write_text("".join(json.dumps(row) + "\n" for row in installed_segments(installed)))
        changed = recipe_changes(installed["config"], recipe) if "config" in installed else {}
        changed["optimizer"] = [
            "the installed run's",
            f"fresh AdamW, lr warmed up over {recipe.warmup_steps} steps",
        ]
        if changed:
            with changes_path.open("a") as f:
                f.write(json.dumps({"step": trainer.step_index, "fields": changed}) + "\n")
            log.info("recipe changed at step %d: %s", trainer.step_index, changed)
        log.info("started from the installed weights at their step %d (fresh optimizer)", trainer.step_index)
    here = segment(trainer.step_index, device, bf16, recipe.images_per_step)
    segments = (
        [json.loads(line) for line in segments_path.read_text().splitlines()]
        if segments_path.exists()
        else []
    )
    if not segments or _place(segments[-1]) != _place(here):  # a new stretch only where the machine changed
        segments.append(here)
        with segments_path.open("a") as f:
            f.write(json.dumps(here) + "\n")
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    best = max((validation_score(row) for row in curve), default=float("-inf"))
    val_set = [scene(seed, 256) for seed in split_seeds("val", val_scenes)]
    cpu_before = curve[-1]["cpu_seconds"] if curve else 0.0
    cpu_started = time.process_time()
    deadline = time.monotonic() + hours * 3600 if hours else None
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def save_state() -> None:
        atomic_save(trainer.state(), state_path)

    def validate_here() -> None:
        nonlocal best
        step = trainer.step_index
        metrics = validate(trainer, val_set)
        row = {
            "step": step,
            "wall_seconds": round(trainer.elapsed_seconds(), 1),
            "cpu_seconds": round(cpu_before + time.process_time() - cpu_started, 1),
            **{k: v for k, v in metrics.items() if k.startswith("miou@")},
        }
        curve.append(row)
        with curve_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        score = validation_score(metrics)
        log.info("validation at step %d: %s (score %.3f, best %.3f)", step, json.dumps(row), score, best)
        if score > best:
            best = score
            ckpt = trainer.checkpoint(metrics={"validation": row})
            ckpt["metadata"]["curve"] = list(curve)
            ckpt["metadata"]["segments"] = list(segments)
            if changes_path.exists():
                ckpt["metadata"]["recipe_changes"] = [
                    json.loads(line) for line in changes_path.read_text().splitlines()
                ]
            atomic_save(ckpt, best_path)
            log.info("new best: %s", best_path)

    try:
        validated = trainer.step_index
        while trainer.step_index < recipe.steps:
            with autocast:
                stats = trainer.step()
            step = trainer.step_index
            if step % recipe.log_every == 0 or step == 1:
                # Recent steps only: the earlier sessions of a resumed run do not count.
                per_step = _seconds_per_step(trainer)
                left = (recipe.steps - step) * per_step
                log.info(
                    "step %d/%d loss %.4f grouping %.4f iou_first %.3f iou_last %.3f lr %.2e (%.1f s/step, "
                    "%.1f h to the end)",
                    step,
                    recipe.steps,
                    stats["loss"],
                    stats.get("grouping", 0.0),
                    stats["iou_first"],
                    stats["iou_last"],
                    stats["lr"],
                    per_step,
                    left / 3600,
                )
            if step % recipe.checkpoint_every == 0:
                save_state()
            if step % val_every == 0 or step == recipe.steps:
                validate_here()
                validated = step
            stop = None
            if deadline and time.monotonic() > deadline:
                stop = f"time budget reached at step {step}"
            elif stop_at is not None and step >= stop_at:
                stop = f"stopped at step {step} as asked"
            if stop:
                log.info(stop)
                if validated != step:  # the steps since the last validation may hold the best weights
                    validate_here()
                break
    finally:
        # Ctrl-C or an error saves where the run stands; a kill (SIGTERM, SIGKILL) loses at most the steps since the
        # last checkpoint_every, and never leaves a half-written state (atomic_save).
        # (A SIGTERM handler that unwound like Ctrl-C hung a 2-thread run twice here, so there is none.)
        save_state()
        trainer.close()
    return best_path


def segment(step: int, device: str, bf16: bool, images_per_step: int) -> dict:
    """Where a run trains from ``step`` on: the device (a GPU by its name), threads, precision, batch."""
    hardware = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"a {os.cpu_count()}-core CPU"
    return {
        "step": step,
        "device": device,
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "images_per_step": images_per_step,
    }


def _place(part: dict) -> dict:
    """A segment without its first step: where and how it trained."""
    return {k: v for k, v in part.items() if k != "step"}


def installed_segments(installed: dict) -> list[dict]:
    """The segments the installed weights record; weights from before segments were recorded trained on one
    device, which their recipe's metadata names."""
    if installed["metadata"].get("segments"):
        return list(installed["metadata"]["segments"])
    config = installed.get("config") or {}
    where = config.get("metadata", {})
    return [
        {
            "step": 0,
            "device": where.get("device", "cpu"),
            "hardware": "a 2-core CPU",
            "threads": where.get("threads"),
            "precision": "fp32",
            "images_per_step": config.get("images_per_step"),
        }
    ]


def _seconds_per_step(trainer: Trainer) -> float:
    recent = trainer.history[-20:]
    if len(recent) < 2:
        return recent[-1]["seconds"] if recent else 0.0
    return (recent[-1]["seconds"] - recent[0]["seconds"]) / (len(recent) - 1)


def install(
    checkpoint: Path,
    test_scenes: int = TEST_SCENES,
    auto_scenes: int = AUTO_SCENES,
    target: Path = EMBEDDED_CHECKPOINT,
) -> dict:
    """Score ``checkpoint`` on the held-out test seeds and install it (fp16) at ``target`` with its figures, and
    MODEL_CARD.md beside it."""
    ckpt = read_checkpoint(checkpoint)
    model = build_model(config_name(ckpt))
    load_weights(model, ckpt)
    model.eval()
    test = [scene(seed, 256) for seed in split_seeds("test", test_scenes)]
    started = time.monotonic()
    interactive = evaluate_interactive(model, test, max_clicks=20, min_area=MIN_AREA, by_area=True)
    print(format_table(interactive))
    reliability = iou_head_reliability(model, test, min_area=MIN_AREA)
    automatic = evaluate_automatic(model, test[:auto_scenes])
    print(json.dumps(automatic))
    test_record = {
        "split": "test",
        "scenes": test_scenes,
        "min_area": MIN_AREA,
        "interactive": interactive,
        "reliability": reliability,
        "automatic": automatic,
        "seconds": round(time.monotonic() - started, 1),
    }
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    metadata = {**ckpt["metadata"], "test": test_record, "step_seconds": _step_seconds(ckpt["metadata"])}
    installed = {
        "model": half,
        "config": ckpt["config"],
        "sam_config": ckpt.get("sam_config"),
        "metadata": metadata,
    }
    atomic_save(installed, target)
    write_card(installed, target)
    print(f"installed {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return test_record


def _step_seconds(metadata: dict) -> float | None:
    """Wall seconds per training step of the run whose checkpoint metadata this is (from its curve)."""
    curve = metadata.get("curve") or []
    if len(curve) < 2:
        return None
    first, last = curve[0], curve[-1]
    return (last["wall_seconds"] - first["wall_seconds"]) / max(1, last["step"] - first["step"])


def write_card(ckpt: dict, weights: Path = EMBEDDED_CHECKPOINT) -> Path:
    """MODEL_CARD.md beside ``weights``, generated from what their checkpoint records."""
    path = weights.parent / "MODEL_CARD.md"
    path.write_text(model_card(ckpt))
    return path


# The floors and aims the embedded model is held to (held-out test scenes, masks of at least MIN_AREA px).
TARGETS = {
    "miou@5_confident": (0.85, 0.90),
    "miou@1_oracle": (0.75, 0.85),
    "miou@1_confident": (0.60, 0.75),
}
AUTOMATIC_TARGETS = {"precision@0.5": 0.8, "recall@0.5": 0.5}


def model_card(ckpt: dict) -> str:
    """The model card, every figure read from the checkpoint dict (its config, sam_config and metadata)."""
    config, meta = ckpt["config"], ckpt["metadata"]
    sam = ckpt.get("sam_config") or {}
    params = sum(v.numel() for v in ckpt["model"].values() if v.is_floating_point())
    encoder_params = sum(
        v.numel()
        for k, v in ckpt["model"].items()
        if k.startswith("image_encoder.") and v.is_floating_point()
    )
    test = meta.get("test") or {}
    interactive, automatic = test.get("interactive") or {}, test.get("automatic") or {}
    curve = meta.get("curve") or []
    lines = [
        f"# Model card: {meta.get('name', 'sam_tiny_synthetic')} (the embedded default)",
        "",
        "Generated by `scripts/train_embedded.py --card` from what `sam_tiny_synthetic.pt` records; edit the",
        "generator, not this file. `sam_core.embedded.load_embedded()` loads the weights (stored fp16, loaded fp32).",
        "",
        "## Model",
        f"SAM with its image encoder swapped for a small one (config `{config['model']}`, image encoder "
        f"`{sam.get('image_encoder', '?')}`, `sam_core/conv_encoder.py`): {sam.get('img_size')} px input, stage widths "
        f"{sam.get('conv_channels')} at strides 2-16, residual blocks {sam.get('conv_depths')}, "
        f"{sam.get('conv_attention_blocks')} global attention blocks at stride 16, stride-4 detail folded into the "
        f"stride-8 embedding; a {sam.get('img_size', 0) // max(1, sam.get('patch_size', 1))} x "
        f"{sam.get('img_size', 0) // max(1, sam.get('patch_size', 1))} x {sam.get('prompt_embed_dim')} image "
        f"embedding. SAM's prompt encoder and mask decoder (two-way transformer depth {sam.get('decoder_depth')}, "
        f"MLP {sam.get('decoder_mlp_dim')}, {sam.get('decoder_num_heads')} heads). {params / 1e6:.2f} M parameters "
        f"({encoder_params / 1e6:.2f} M in the image encoder). Trained from scratch: no pre-trained weights can be "
        "downloaded here.",
        "",
        "## Data",
        "`sam_core.synthetic`: procedurally generated 256 x 256 scenes (textured backgrounds, 2-5 occluding objects "
        "with parts and subparts, every level an instance), train seeds drawn at random from 0..999,999. "
        f"Validation: the first {VAL_SCENES} val seeds; test: the first {test.get('scenes', '?')} test seeds "
        f"(held out; masks of at least {test.get('min_area', MIN_AREA)} px).",
        "",
        "## Recipe (`EMBEDDED_RECIPE` in sam_core/recipes.py)",
        _recipe_line(config),
        "",
        *_where_trained(meta, config),
        "",
    ]
    for change in meta.get("recipe_changes") or []:
        fields = ", ".join(
            f"{k} {_short(old)} -> {_short(new)}" for k, (old, new) in change["fields"].items()
        )
        lines.append(f"The run went on under a changed recipe from step {change['step']}: {fields}.")
    lines += ["", "## Held-out figures (test seeds)"]
    if interactive:
        lines += [
            "Interactive clicks as in the paper's protocol: the first at the point farthest from the boundary, each "
            'next on the error of the mask shown; "confident" keeps the first click\'s highest-predicted-IoU mask '
            'of three (what a user sees), "oracle" the best of three.',
            "",
            "```",
            format_table(interactive),
            "```",
            "",
            "| target | floor | aim | reached | |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, (floor, aim) in TARGETS.items():
            value = interactive.get(key)
            verdict = "met" if value is not None and value >= floor else "below the floor"
            shown = f"{value:.3f}" if value is not None else "-"
            lines.append(f"| {key} | {floor} | {aim} | {shown} | {verdict} |")
    if automatic:
        lines += [
            "",
            f"Automatic masks (`AutomaticMaskGenerator`, {automatic['points_per_side']}x{automatic['points_per_side']} "
            f"grid, predicted IoU > {automatic['pred_iou_thresh']}, stability >= {automatic['stability_score_thresh']})"
            f" on {automatic['images']} test scenes: {automatic['masks_per_image']:.1f} masks per image, precision "
            f"{automatic['precision@0.5']:.3f} at mask IoU 0.5 (target >= {AUTOMATIC_TARGETS['precision@0.5']}), "
            f"recall {automatic['recall@0.5']:.3f} of the ground-truth masks of at least {automatic['min_gt_area']} px "
            f"(target >= {AUTOMATIC_TARGETS['recall@0.5']}).",
        ]
    if interactive.get("by_area"):
        lines += [
            "",
            "By mask area (pixels of the 256 px scene): where the mean is held down.",
            "",
            "| area px | masks | mIoU@1 confident | mIoU@1 oracle | mIoU@5 | mIoU@9 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['min_area']}-{r['max_area'] or ''} | {r['masks']} | {r['miou@1_confident']:.3f} "
            f"| {r['miou@1_oracle']:.3f} | {r['miou@5_confident']:.3f} | {r['miou@9_confident']:.3f} |"
            for r in interactive["by_area"]
        ]
    if test.get("reliability"):
        lines += [
            "",
            "Reliability of the IoU head (first click, all three outputs, binned by predicted IoU):",
            "",
            "| predicted IoU | outputs | mean predicted | mean true IoU |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['bin']} | {r['outputs']} | {r['predicted']:.3f} | {r['actual']:.3f} |"
            for r in test["reliability"]
        ]
    if curve:
        lines += [
            "",
            f"## Validation curve ({VAL_SCENES} val scenes, moving-average weights)",
            "",
            "| step | wall h | CPU h | mIoU@1 confident | mIoU@1 oracle | mIoU@5 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        every = max(1, len(curve) // 20)
        shown = curve[::every] + ([curve[-1]] if (len(curve) - 1) % every else [])
        lines += [
            f"| {r['step']} | {r['wall_seconds'] / 3600:.2f} | {r['cpu_seconds'] / 3600:.2f} "
            f"| {r['miou@1_confident']:.3f} | {r['miou@1_oracle']:.3f} | {r[f'miou@{VAL_CLICKS}_confident']:.3f} |"
            for r in shown
        ]
    lines += [
        "",
        "## Reproduce",
        "```",
        ".venv/bin/python scripts/train_embedded.py --run-dir RUN_DIR --hours H   # resumes from RUN_DIR/state.pt",
        ".venv/bin/python scripts/train_embedded.py --install-from RUN_DIR/best.pt",
        "```",
        'Use the official checkpoints (`build_sam("vit_b", checkpoint=...)`) for real work; this model exists so '
        "that every flow, test and demo runs offline.",
        "",
    ]
    return "\n".join(lines)


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def _where_trained(meta: dict, config: dict) -> list[str]:
    """Steps, wall time and the machine of each stretch of the run (``segments``; one line for weights from before
    segments were recorded)."""
    steps, wall = meta.get("steps"), meta.get("wall_seconds", 0)
    segments = meta.get("segments")
    if not segments:
        per_step = (
            f" ({1000 * meta['step_seconds'] / 60:.0f} min per 1,000 steps"
            if meta.get("step_seconds")
            else " ("
        )
        where = config.get("metadata", {})
        return [
            f"Trained {steps} steps in {wall / 3600:.2f} h of wall time{per_step} on {where.get('threads', '?')} "
            f"threads of a 2-core CPU, device {where.get('device', 'cpu')})."
        ]
    walls = {row["step"]: row["wall_seconds"] for row in meta.get("curve") or []}
    walls.update({0: 0.0, steps: wall})
    lines = [f"Trained {steps:,} steps in {wall / 3600:.2f} h of wall time (validations included):", ""]
    for i, part in enumerate(segments):
        start = part["step"]
        end = segments[i + 1]["step"] if i + 1 < len(segments) else steps
        known = start in walls and end in walls
        seconds = walls[end] - walls[start] if known else None
        timing = (
            f"{seconds / 3600:.2f} h, {1000 * seconds / max(1, end - start) / 60:.1f} min per 1,000 steps"
            if known
            else "time not recorded"
        )
        lines.append(
            f"- steps {start:,}-{end:,} on {part['hardware']} (device {part['device']}, {part['threads']} threads, "
            f"{part['precision']}, {part['images_per_step']} images a step): {timing}"
        )
    return lines


def _recipe_line(config: dict) -> str:
    return (
        f"{config['images_per_step']} images x {config['masks_per_image']} masks a step; per mask a first prompt "
        f"(a point, or a noisy box with odds {config['box_probability']}) then {config['correction_points']} "
        "correction clicks on the errors of the mask the IoU head ranks first, its logits fed back as the mask "
        f"prompt; {config['pixel_loss']}:dice {config['focal_weight']:g}:{config['dice_weight']:g}, the lowest-loss of "
        f"three outputs for a single point; MSE on the IoU head. AdamW lr {config['lr']:g} (weight decay "
        f"{config['weight_decay']:g}, not on norms, biases and tokens), {config['warmup_steps']} warmup steps, "
        f"the peak held until the last {config['decay_fraction']:.0%} of {config['steps']} steps, then cosine to "
        f"{config['min_lr_ratio']:g}x; weights averaged (EMA {config['ema_decay']}); the decoder's cross-attention "
        f"starts location-aware (gain {config['attention_init_gain']:g}, `sam_core.train.locality_init`)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = training_parser(__doc__, Path.home() / ".cache/sam-engine/embedded", val_every=100)
    parser.add_argument("--hours", type=float, default=None, help="stop after this much wall time")
    parser.add_argument(
        "--from-installed", action="store_true", help="no state yet: go on from the installed weights"
    )
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (GPU)")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes drawing the scenes ahead of the step (a GPU step outruns one core drawing them)",
    )
    parser.add_argument("--install-from", type=Path, default=None, help="score and install this checkpoint")
    parser.add_argument(
        "--card", action="store_true", help="regenerate MODEL_CARD.md from the installed weights"
    )
    args = parse_training_args(parser, argv)
    if args.card:
        print(write_card(torch.load(EMBEDDED_CHECKPOINT, map_location="cpu", weights_only=True)))
        return
    if args.install_from:
        install(args.install_from)
        return
    recipe = dataclasses.replace(EMBEDDED_RECIPE, **parse_overrides(EMBEDDED_RECIPE, args.set))
    best = run(
        args.run_dir,
        recipe,
        args.hours,
        args.val_every,
        args.from_installed,
        args.device,
        args.bf16,
        args.stop_at,
        data_workers=args.data_workers,
    )
    log.info("best checkpoint so far: %s", best)


if __name__ == "__main__":
    main()
