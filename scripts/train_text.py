"""Train the text path on top of the embedded model (sam_core.text_train): one recipe, resumable at any step.

    .venv/bin/python scripts/train_text.py --run-dir ~/.cache/sam-engine/text --minutes 60 > text.log 2>&1 &
    .venv/bin/python scripts/train_text.py --evaluate ~/.cache/sam-engine/text/best.pt --split test --scenes 50
    .venv/bin/python scripts/train_text.py --install-from ~/.cache/sam-engine/recognizer/best.pt   # ship it

The run directory holds ``state.pt`` (weights, text encoder, optimizer, step, random generators: written every
``--checkpoint-every`` steps and on stop, atomically), ``best.pt`` (the text model that scored best on the
held-out validation scenes so far, a checkpoint ``sam_core.text_model.load_text_model`` reads, with the curve)
and ``curve.jsonl`` (one line per validation). Run the same command again and it goes on from ``state.pt``: the
lr schedule is a function of the step, so it resumes where it stood. ``--evaluate`` prints the table of
``sam_core.text_eval`` (mIoU of phrases naming one object, instance recall of phrases naming several, presence
accuracy) for a checkpoint on held-out scenes; with ``--card`` it also writes MODEL_CARD.md beside it.
``--install-from`` ships a text checkpoint trained on the embedded model as its text path (sam_core/weights:
an adapter of its text tensors, and TEXT_MODEL_CARD.md with the test table).

CLIP instead of the embedded text encoder: ``--clip-model ViT-B-32 --clip-checkpoint open_clip_model.bin`` (a
local file; only the projection, the presence head and, at a fraction of the lr, the decoder learn).
Experiments are overrides of the recipe: ``--set steps=500 decoder_lr_scale=0``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import fsspec
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.checkpoint import atomic_save, read_checkpoint, text_adapter  # noqa: E402
from sam_core.embedded import EMBEDDED_CHECKPOINT, EMBEDDED_TEXT_CHECKPOINT  # noqa: E402
from sam_core.evaluate import evaluate_interactive  # noqa: E402
from sam_core.recipes import parse_overrides, parse_training_args, recipe_changes, training_parser  # noqa: E402
from sam_core.synthetic import scene, split_seeds  # noqa: E402
from sam_core.text_eval import evaluate_text, format_text_table  # noqa: E402
from sam_core.text_model import load_text_model  # noqa: E402
from sam_core.text_train import TextTrainConfig, TextTrainer  # noqa: E402
from stores.fsio import atomic_write  # noqa: E402

log = logging.getLogger("train_text")

# The text path's recipe: TextTrainConfig's defaults (one source for each setting) but for what is named here.
# The mask recognizer (sam_core.text_recognition) picks which of the image's masks a phrase names; the decoder is
# then asked with the text, a click inside that mask and its box, the prompt it mostly trains on
# (point_box_probability). Measured before it (24 val scenes): a grounding map over the embedding cells, from the
# pixels and the embedding (an experiment, not kept) put its peak on the named object 51% of the time, where the
# recognizer, trained 1,000 steps on ground-truth masks, picked it 85% of the time.
RECIPE = TextTrainConfig(
    recognizer_width=128,
    phrases_per_kind=6,
    point_probability=0.1,
    box_probability=0.1,
    point_box_probability=0.6,
    lr=1e-3,
    steps=2500,
    # The decoder stays the embedded model's, so a text model answers clicks and boxes exactly as it does: with the
    # decoder at 0.1 of the lr, 500 steps of this recipe had cost clicks on 8 val scenes mIoU@1 0.574 -> 0.528.
    decoder_lr_scale=0.0,
    metadata={"name": "sam_tiny_synthetic_text", "data": "sam_core.synthetic train seeds, sam_core.phrases"},
)
VAL_SCENES = 24
# Clicks on the validation scenes (3 each, masks of at least 30 px), beside the text figures: a decoder that
# learns with the text path may answer clicks worse (after 186 steps at decoder_lr_scale 0.1, 8 val scenes:
# mIoU@1 confident 0.503 -> 0.534, oracle 0.725 -> 0.700, mIoU@3 0.751 -> 0.741).
VAL_CLICK_SCENES = 8
CLICK_FIGURES = ("miou@1_confident", "miou@1_oracle", "miou@3_confident")


def validation_score(metrics: dict) -> float:
    """One number to rank checkpoints: mIoU of one-object phrases + instance recall + the mean of the presence
    accuracies on absent and present phrases (absent alone would reward a model that finds nothing)."""
    presence = (metrics["presence_accuracy_absent"] + metrics["presence_accuracy_present"]) / 2
    return metrics["miou_one"] + metrics["recall_several@0.5"] + presence


def run(
    run_dir: Path,
    recipe: TextTrainConfig,
    minutes: float | None = None,
    val_every: int = 200,
    stop_at: int | None = None,
    val_scenes: int = VAL_SCENES,
    checkpoint_every: int = 50,
    log_every: int = 10,
    device: str = "cpu",
    val_click_scenes: int = VAL_CLICK_SCENES,
) -> Path:
    """Train (or go on training) until the recipe's last step, ``stop_at`` or ``minutes`` of wall time;
    returns best.pt's path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, best_path, curve_path = run_dir / "state.pt", run_dir / "best.pt", run_dir / "curve.jsonl"
    trainer = TextTrainer(recipe, device=device)
    clicks = Clicks([scene(seed, 256) for seed in split_seeds("val", val_click_scenes)], trainer)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        trainer.restore(state)
        changed = recipe_changes(state["config"], recipe)
        log.info(
            "resumed %s at step %d/%d (%.0f s trained so far)%s",
            state_path,
            trainer.step_index,
            recipe.steps,
            state["seconds"],
            f"; recipe changed: {changed}" if changed else "",
        )
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    best = max((row["score"] for row in curve), default=float("-inf"))
    val_seeds = split_seeds("val", val_scenes)
    deadline = time.monotonic() + minutes * 60 if minutes else None
    session_start, session_steps = time.monotonic(), 0
    try:
        while trainer.step_index < recipe.steps:
            stats = trainer.step()
            session_steps += 1
            step = trainer.step_index
            if step % log_every == 0 or step == 1:
                per_step = (time.monotonic() - session_start) / session_steps
                left = (recipe.steps - step) * per_step
                log.info(
                    "step %d/%d loss %.4f (mask %.4f, presence %.4f, recognizer %.4f, picked %.3f) mask IoU %.3f "
                    "presence accuracy %.3f over %d phrases, lr %.2e (%.2f s/step, %.1f min to step %d)",
                    step,
                    recipe.steps,
                    stats["loss"],
                    stats["mask"],
                    stats["presence"],
                    stats.get("recognizer", 0.0),
                    stats.get("picked", 0.0),
                    stats["iou"],
                    stats["presence_accuracy"],
                    stats["phrases"],
                    stats["lr"],
                    per_step,
                    left / 60,
                    recipe.steps,
                )
            if step % checkpoint_every == 0:
                atomic_save(trainer.state(), state_path)
            out_of_time = bool(deadline and time.monotonic() > deadline)
            stopping = out_of_time or (stop_at is not None and step >= stop_at)
            # A run that stops validates there too, so its curve ends where it stopped.
            if step % val_every == 0 or step == recipe.steps or stopping:
                best = _validate(trainer, val_seeds, clicks, curve, curve_path, best, best_path)
            if stopping:
                log.info(
                    "stopped at step %d (%s)", step, "time budget reached" if out_of_time else "as asked"
                )
                break
    finally:
        # Ctrl-C or an error saves where the run stands; a kill loses at most checkpoint_every steps, and never
        # leaves a half-written state (atomic_save).
        atomic_save(trainer.state(), state_path)
    return best_path


class Clicks:
    """Interactive figures (sam_core.evaluate) of the model on a few validation scenes, and those of the model
    the run started from (measured on the fresh trainer, whose text-free answers are the base model's)."""

    def __init__(self, scenes: list, trainer: TextTrainer):
        self.scenes = scenes
        self.base = self(trainer) if scenes else {}

    def __call__(self, trainer: TextTrainer) -> dict:
        if not self.scenes:
            return {}
        figures = evaluate_interactive(trainer.model.eval(), self.scenes, max_clicks=3, min_area=30)
        return {k: round(figures[k], 4) for k in CLICK_FIGURES}


def _validate(
    trainer: TextTrainer,
    val_seeds,
    clicks: Clicks,
    curve: list,
    curve_path: Path,
    best: float,
    best_path: Path,
) -> float:
    """Score the model on the validation scenes (text, and clicks against the base model), append the row to
    the curve, keep best.pt; returns the best score so far."""
    metrics = evaluate_text(trainer.model, trainer.text_encoder, val_seeds)
    score = validation_score(metrics)
    step = trainer.step_index
    row = {
        "step": step,
        "wall_seconds": round(trainer.elapsed_seconds(), 1),
        "score": score,
        **metrics,
        "clicks": clicks(trainer),
        "clicks_base": clicks.base,
    }
    curve.append(row)
    with curve_path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    click_line = ", ".join(f"{k} {row['clicks'][k]:.3f} (base {clicks.base[k]:.3f})" for k in row["clicks"])
    log.info(
        "validation at step %d on %d val scenes (score %.3f, best before %.3f):\n%s\nclicks on %d val scenes: %s",
        step,
        len(val_seeds),
        score,
        best,
        format_text_table(metrics),
        len(clicks.scenes),
        click_line or "not measured",
    )
    if score > best:
        ckpt = trainer.checkpoint(metrics={"validation": row})
        ckpt["metadata"]["curve"] = list(curve)
        atomic_save(ckpt, best_path)
        log.info("new best: %s", best_path)
        return score
    return best


def evaluate(
    checkpoint: Path, split: str, scenes: int, clip_checkpoint: str | None = None, card: bool = False
) -> dict:
    """Print and return the held-out table of a text checkpoint on the first ``scenes`` scenes of ``split``;
    ``card`` also writes MODEL_CARD.md beside the checkpoint, every figure read from the checkpoint and this
    evaluation."""
    model, encoder = load_text_model(checkpoint, clip_checkpoint=clip_checkpoint)
    started = time.monotonic()
    metrics = evaluate_text(model, encoder, split_seeds(split, scenes))
    seconds = time.monotonic() - started
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    print(f"{checkpoint} (step {ckpt['metadata'].get('steps')}) on the {split} split, {seconds:.0f} s:")
    print(format_text_table(metrics))
    if card:
        path = Path(checkpoint).with_name("MODEL_CARD.md")
        path.write_text(model_card(ckpt, metrics, split))
        print(f"wrote {path}")
    return metrics


def install(checkpoint: Path, scenes: int, target: Path = EMBEDDED_TEXT_CHECKPOINT) -> dict:
    """Ship ``checkpoint`` as the embedded model's text path: score it on the first ``scenes`` test scenes, then
    write it as an adapter (sam_core.checkpoint.text_adapter: its text tensors and text encoder, on top of the
    embedded weights it must have kept exactly) to ``target`` (sam_core/weights) with TEXT_MODEL_CARD.md beside
    it, each file atomically. SystemExit naming the file when it is not a text model of the embedded weights."""
    if not Path(checkpoint).is_file():
        raise SystemExit(f"--install-from {checkpoint}: no such file (a text checkpoint, RUN_DIR/best.pt)")
    try:
        ckpt = read_checkpoint(checkpoint)
        adapter = text_adapter(ckpt)
    except ValueError as err:
        raise SystemExit(f"--install-from {checkpoint}: {err}") from err
    metrics = evaluate(checkpoint, "test", scenes)
    card = model_card(ckpt, metrics, "test").replace(
        "`scripts/train_text.py --evaluate CHECKPOINT --card`",
        f"`scripts/train_text.py --install-from CHECKPOINT` (from {checkpoint})",
    )
    card += (
        f"\nShipped as `{target.name}`: the text path's tensors and the text encoder "
        f"(an adapter on `{EMBEDDED_CHECKPOINT.name}`, whose weights it was trained on and checks when read).\n"
    )
    atomic_save(adapter, target)
    card_path = target.with_name("TEXT_MODEL_CARD.md")
    atomic_write(fsspec.filesystem("file"), str(card_path), card.encode())
    print(f"installed {target} and {card_path}")
    return metrics


def model_card(ckpt: dict, metrics: dict, split: str) -> str:
    """A text model's card: what it is, its recipe, the held-out table and the validation curve."""
    config, meta, sam = ckpt["config"], ckpt["metadata"], ckpt["sam_config"]
    encoder = ckpt["text_encoder"]
    lines = [
        f"# Model card: {meta.get('name', 'text model')}",
        "",
        "Generated by `scripts/train_text.py --evaluate CHECKPOINT --card`; edit the generator, not this file.",
        "",
        "## Model",
        f"SAM (image encoder `{sam['image_encoder']}`, {sam['img_size']} px) with a text path: a "
        f"{sam['text_dim']}-d text embedding from the `{encoder['kind']}` text encoder "
        f"({(encoder.get('config') or {}).get('model_name') or 'sam_core.text_encoder.EmbeddedTextEncoder'}) "
        f"projected to {sam['text_tokens']} prompt tokens, and a presence head. Base weights: "
        f"{config.get('base_checkpoint') or 'the embedded model'}.",
        "",
        "## Recipe (`TextTrainConfig`, sam_core/text_train.py)",
        f"{config['steps']} steps of {config['scenes_per_step']} scenes x up to {config['phrases_per_scene']} phrases "
        f"(odds of a click {config['point_probability']}, of a box {config['box_probability']}); AdamW lr "
        f"{config['lr']:g}, warmup {config['warmup_steps']}, decoder at {config['decoder_lr_scale']:g} x lr; "
        f"trained {meta.get('steps')} steps in {meta.get('wall_seconds', 0) / 60:.1f} min.",
        "",
    ]
    stage = meta.get("recognizer_stage")
    if stage:
        recipe = stage["recipe"]
        lines += [
            "## Recognizer stage (`RecognizerTrainConfig`, sam_core/recognizer_train.py)",
            f"Then the mask recognizer alone, on the candidate masks of {recipe['train_scenes']} training scenes "
            f"(labelled by IoU: named >= {recipe['positive_iou']}, not < {recipe['negative_iou']}), "
            f"{recipe['scenes_per_step']} scenes a step, lr {recipe['lr']:g}; best on {recipe['val_scenes']} val "
            f"scenes' candidates at step {stage['steps']} of {recipe['steps']} "
            f"(`scripts/train_recognizer.py --base {stage['base']}`).",
        ]
        bias = stage["validation"].get("presence_bias")
        if bias is not None:
            lines.append(
                f"A phrase is judged present when its best candidate's logit plus the presence bias {bias:+.1f} is "
                "above 0; the bias is the one of best balanced accuracy on those val scenes (calibrate_presence)."
            )
        instance_bias = stage["validation"].get("instance_bias")
        if instance_bias is not None:
            lines.append(
                f"The instances of a several-object phrase are the candidates whose logit plus the instance bias "
                f"{instance_bias:+.1f} is above 0, the bias of best balanced accuracy on those val scenes' "
                f"candidates (calibrate_instances): val recall {stage['validation']['recall@0.5']:.3f} at "
                f"candidate precision {stage['validation'].get('precision@0.5', float('nan')):.3f}."
            )
        lines.append("")
    lines += [
        f"## Held-out figures ({split} scenes)",
        "",
        format_text_table(metrics),
    ]
    curve = meta.get("curve") or []
    if curve:
        lines += [
            "",
            "## Validation curve",
            "",
            "| step | wall min | mIoU one | recall several | presence absent | presence present |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['step']} | {r['wall_seconds'] / 60:.1f} | {r['miou_one']:.3f} | {r['recall_several@0.5']:.3f} "
            f"| {r['presence_accuracy_absent']:.3f} | {r['presence_accuracy_present']:.3f} |"
            for r in curve
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = training_parser(__doc__, Path.home() / ".cache/sam-engine/text", val_every=200)
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    parser.add_argument("--val-scenes", type=int, default=VAL_SCENES)
    parser.add_argument("--val-click-scenes", type=int, default=VAL_CLICK_SCENES, help="0: no click figures")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument(
        "--clip-model", default=None, help="train with CLIP's text encoder of this open_clip model"
    )
    parser.add_argument(
        "--clip-checkpoint", default=None, help="a local open_clip checkpoint of --clip-model"
    )
    parser.add_argument(
        "--evaluate", type=Path, default=None, help="print the held-out table of this checkpoint"
    )
    parser.add_argument("--split", default="test", help="the split --evaluate scores on")
    # Every test scene: the first 50 are easier than the rest (a recognizer at 0.72 one-object mIoU on them scored
    # 0.69 on all 200), so a card of 50 would claim floors the model does not reach.
    parser.add_argument(
        "--scenes",
        type=int,
        default=200,
        help="how many scenes --evaluate scores (default: all 200 test scenes)",
    )
    parser.add_argument("--card", action="store_true", help="--evaluate also writes MODEL_CARD.md beside it")
    parser.add_argument(
        "--install-from",
        type=Path,
        default=None,
        help="ship this text checkpoint as the embedded model's text path (sam_core/weights), scored on the test "
        "scenes for its card",
    )
    args = parse_training_args(parser, argv)
    if args.install_from:
        try:
            split_seeds("test", args.scenes)
        except ValueError as err:
            raise SystemExit(f"--install-from --scenes {args.scenes}: {err}") from err
        install(args.install_from, args.scenes)
        return
    if args.evaluate:
        try:  # before the model loads: a split without that many scenes, or no such split
            split_seeds(args.split, args.scenes)
        except ValueError as err:
            raise SystemExit(f"--split {args.split} --scenes {args.scenes}: {err}") from err
        evaluate(args.evaluate, args.split, args.scenes, args.clip_checkpoint, args.card)
        return
    recipe = dataclasses.replace(RECIPE, **parse_overrides(RECIPE, args.set))
    if args.clip_model or args.clip_checkpoint:
        config = {"model_name": args.clip_model or "ViT-B-32", "checkpoint": args.clip_checkpoint}
        recipe = dataclasses.replace(recipe, text_encoder="clip", text_encoder_config=config)
    best = run(
        args.run_dir,
        recipe,
        args.minutes,
        args.val_every,
        args.stop_at,
        args.val_scenes,
        args.checkpoint_every,
        args.log_every,
        args.device,
        args.val_click_scenes,
    )
    log.info("best checkpoint so far: %s", best)


if __name__ == "__main__":
    main()
