"""Train a text model's mask recognizer on the candidates it meets at inference (sam_core.recognizer_train).

    .venv/bin/python scripts/train_text.py --run-dir ~/.cache/sam-engine/text              # stage 1
    .venv/bin/python scripts/train_recognizer.py --base ~/.cache/sam-engine/text/best.pt \\
        --run-dir ~/.cache/sam-engine/recognizer > recognizer.log 2>&1 &                     # stage 2
    .venv/bin/python scripts/train_text.py --evaluate ~/.cache/sam-engine/recognizer/best.pt --card

Stage 2 changes only the recognizer: the decoder, the text tokens and the text encoder stay the base's. The run
directory holds ``candidates/`` (each scene's candidate descriptors and their IoU with the ground truth, in
chunks: a rerun computes only what is missing), ``state.pt`` (the recognizer, optimizer, step, random generator:
written every ``--checkpoint-every`` steps and on stop, atomically), ``best.pt`` (the base checkpoint with the
recognizer that scored best on the validation scenes' candidates so far: a text checkpoint every command reads)
and ``curve.jsonl``. At each validation the recognizer's presence and instance biases are calibrated on the val
scenes' candidates and saved with it. Run the same command again and it goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.checkpoint import atomic_save, read_checkpoint  # noqa: E402
from sam_core.recipes import parse_overrides, parse_training_args, recipe_changes, training_parser  # noqa: E402
from sam_core.recognizer_train import (  # noqa: E402
    RecognizerTrainConfig,
    RecognizerTrainer,
    build_candidates,
    fit_recognizer,
    score,
)
from sam_core.text_model import is_text_checkpoint, load_text_model, text_checkpoint  # noqa: E402

log = logging.getLogger("train_recognizer")

RECIPE = RecognizerTrainConfig()


def progress_line(label: str):
    """A progress callback for build_candidates that logs counts and time left every 25 scenes."""

    def report(done: int, total: int, seconds_left: float) -> None:
        if done % 25 == 0 or done == total:
            log.info("%s candidates: %d/%d scenes (%.1f min left)", label, done, total, seconds_left / 60)

    return report


def run(
    base: Path,
    run_dir: Path,
    recipe: RecognizerTrainConfig,
    val_every: int = 250,
    stop_at: int | None = None,
    checkpoint_every: int = 100,
    log_every: int = 50,
) -> Path:
    """Build the candidate caches, then train (or go on training) to the recipe's last step or ``stop_at``;
    returns best.pt's path."""
    try:  # before anything is read or written: a recipe that cannot run says so
        recipe.validate()
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from err
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, best_path, curve_path = run_dir / "state.pt", run_dir / "best.pt", run_dir / "curve.jsonl"
    if not Path(base).is_file():
        raise SystemExit(f"--base {base}: no such file (a text checkpoint of scripts/train_text.py)")
    # Not a checkpoint, or one without a text path: the errors name the file; no traceback.
    try:
        base_ckpt = read_checkpoint(str(base))
        if not is_text_checkpoint(base_ckpt):
            load_text_model(str(base))  # raises the error that names the file and what it is not
    except ValueError as err:
        raise SystemExit(f"--base: {err}") from err
    try:
        fitted, why = fit_recognizer(base_ckpt, recipe.seed)
        if why:
            log.warning("%s: %s", base, why)
        model, text_encoder = load_text_model(fitted)
    except ValueError as err:
        raise SystemExit(f"--base {base}: {err}") from err
    folder = run_dir / "candidates"
    val = build_candidates(
        model, text_encoder, folder, "val", recipe.val_scenes, recipe.per_kind, progress_line("val")
    )
    train = build_candidates(
        model, text_encoder, folder, "train", recipe.train_scenes, recipe.per_kind, progress_line("train")
    )
    trainer = RecognizerTrainer(recipe, model, text_encoder, train)
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        trainer.restore(state)
        changed = recipe_changes(state["config"], recipe)
        log.info("resumed %s at step %d/%d%s", state_path, trainer.step_index, recipe.steps,
                 f"; recipe changed: {changed}" if changed else "")  # fmt: skip
    else:
        trainer.calibrate_presence(val)
        trainer.calibrate_instances(val)
        base_figures = trainer.evaluate(val)
        log.info("the base's recognizer on %d val scenes: %s", len(val), _line(base_figures))
        curve.append({"step": 0, "score": score(base_figures), **base_figures})
        with curve_path.open("a") as f:
            f.write(json.dumps(curve[-1]) + "\n")
    best = max((row["score"] for row in curve if row["step"] > 0), default=float("-inf"))
    started, session_steps = time.monotonic(), 0
    try:
        while trainer.step_index < recipe.steps:
            stats = trainer.step()
            session_steps += 1
            step = trainer.step_index
            if step % log_every == 0 or step == 1:
                left = (recipe.steps - step) * (time.monotonic() - started) / session_steps
                log.info("step %d/%d loss %.4f picked %.3f lr %.2e (%.1f min left)",
                         step, recipe.steps, stats["loss"], stats["picked"], stats["lr"], left / 60)  # fmt: skip
            if step % checkpoint_every == 0:
                atomic_save(trainer.state(), state_path)
            stopping = stop_at is not None and step >= stop_at
            if step % val_every == 0 or step == recipe.steps or stopping:
                trainer.calibrate_presence(val)  # the biases saved with this step's recognizer
                trainer.calibrate_instances(val)
                figures = trainer.evaluate(val)
                row = {"step": step, "score": score(figures), **figures}
                curve.append(row)
                with curve_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                log.info("validation at step %d: %s (score %.3f, best before %.3f)", step, _line(figures),
                         row["score"], best)  # fmt: skip
                if row["score"] > best:
                    best = row["score"]
                    metadata = {
                        **base_ckpt.get("metadata", {}),
                        "recognizer_stage": {
                            "base": str(base),
                            "recipe": dataclasses.asdict(recipe),
                            "steps": step,
                            "validation": row,
                            "curve": list(curve),
                        },
                    }
                    atomic_save(
                        text_checkpoint(model, text_encoder, base_ckpt["config"], metadata), best_path
                    )
                    log.info("new best: %s", best_path)
            if stopping:
                log.info("stopped at step %d as asked", step)
                break
    finally:
        atomic_save(trainer.state(), state_path)
    return best_path


def _line(figures: dict) -> str:
    return (
        f"pick IoU {figures['pick_iou']:.3f} (best candidate {figures['best_iou']:.3f}, {figures['phrases_one']} "
        f"phrases), recall@0.5 {figures['recall@0.5']:.3f} ({figures['instances']} instances, precision "
        f"{figures['precision@0.5']:.3f}, instance bias {figures['instance_bias']:+.1f}), presence absent "
        f"{figures['presence_accuracy_absent']:.3f} present {figures['presence_accuracy_present']:.3f} (presence "
        f"bias {figures['presence_bias']:+.1f})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = training_parser(__doc__, Path.home() / ".cache/sam-engine/recognizer", val_every=250)
    parser.add_argument(
        "--base", type=Path, required=True, help="the stage-1 text checkpoint (with a recognizer)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=50)
    args = parse_training_args(parser, argv)
    recipe = dataclasses.replace(RECIPE, **parse_overrides(RECIPE, args.set))
    best = run(
        args.base, args.run_dir, recipe, args.val_every, args.stop_at, args.checkpoint_every, args.log_every
    )
    log.info("best checkpoint so far: %s", best)


if __name__ == "__main__":
    main()
