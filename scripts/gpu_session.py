"""The prepared run for a lent GPU machine: one call does the GPU work worth its few minutes, and every figure it
measures comes back in one folder.

    # on the GPU machine (its python3 holds torch; sam_core needs only torch, numpy and OpenCV):
    PYTHONUNBUFFERED=1 python3 scripts/gpu_session.py --out $OUT --budget 470
    # rehearsal here, tiny and on the CPU:
    .venv/bin/python scripts/gpu_session.py --out /tmp/gpu --device cpu --budget 60 --images-per-step 2 \
        --probe-steps 2 --workers 1 --val-scenes 1

Phases, each in its own try so one failing does not cost the others:
1. the machine: torch, the GPU, the cores;
2. GPU paths: SamPredictor on the GPU against the CPU (logits, masks, predicted IoU), in bf16 autocast against
   fp32, the automatic mask generator's time on both, a ViT-B image encoder's time in fp32 and bf16;
3. a speed probe of the embedded model's training step, bf16 autocast against fp32 (the faster one trains);
4. training: the embedded model's recipe goes on from the installed weights (fresh optimizer, warmup) at
   ``--images-per-step`` images a step, with the steps that fit the time left; it validates as
   scripts/train_embedded.py does, keeps the best that beats the installed weights' validation, and stops at the
   budget.

Written to OUT: session.json (every figure), train.log, curve.jsonl, changes.jsonl and, when the run beat the
installed weights on validation, best_fp16.pt (the moving-average weights in fp16: what ``train_embedded.py
--install-from`` scores on the test scenes and installs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# train_embedded lies beside this file; import it however this file is loaded.
sys.path.insert(1, str(Path(__file__).resolve().parent))

import train_embedded  # noqa: E402

from sam_core.checkpoint import atomic_save, read_checkpoint  # noqa: E402
from sam_core.embedded import EMBEDDED_CHECKPOINT, load_embedded  # noqa: E402
from sam_core.recipes import EMBEDDED_RECIPE  # noqa: E402
from sam_core.synthetic import scene, split_seeds  # noqa: E402
from sam_core.train import Trainer  # noqa: E402

log = logging.getLogger("gpu_session")


def machine(device: str) -> dict:
    info = {"torch": torch.__version__, "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
        )
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, bf16: bool):
    return (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if bf16
        else contextlib.nullcontext()
    )


def predictor_paths(device: str, scenes: int = 4) -> dict:
    """The embedded model's SamPredictor on ``device`` (fp32, then bf16 autocast) against the CPU, one click at
    the centre of each scene's first masks: max |logit difference|, the smallest mask IoU, max |predicted IoU
    difference|."""
    from sam_core.predictor import SamPredictor

    cpu_model = load_embedded().eval()
    dev_model = load_embedded().to(device).eval()
    out = {"clicks": 0, "fp32": {"max_logit_diff": 0.0, "min_mask_iou": 1.0, "max_score_diff": 0.0}}
    out["bf16"] = dict(out["fp32"])
    for seed in split_seeds("val", scenes):
        image, masks = scene(seed, 256)
        reference, on_device = SamPredictor(cpu_model), SamPredictor(dev_model)
        reference.set_image(image)
        on_device.set_image(image)
        for mask in masks[:4]:
            ys, xs = np.nonzero(mask)
            point = np.array([[xs.mean(), ys.mean()]], dtype=np.float32)
            label = np.array([1])
            m0, s0, l0 = reference.predict(point, label, return_logits=True)
            for mode, bf16 in (("fp32", False), ("bf16", True)):
                with torch.no_grad(), _autocast(device, bf16):
                    m1, s1, l1 = on_device.predict(point, label, return_logits=True)
                a, b = m0 > 0, m1.astype(np.float32) > 0
                inter = (a & b).sum(axis=(1, 2))
                union = np.maximum((a | b).sum(axis=(1, 2)), 1)
                row = out[mode]
                row["max_logit_diff"] = max(
                    row["max_logit_diff"], float(np.abs(l0 - l1.astype(np.float32)).max())
                )
                row["min_mask_iou"] = min(row["min_mask_iou"], float((inter / union).min()))
                row["max_score_diff"] = max(
                    row["max_score_diff"], float(np.abs(s0 - s1.astype(np.float32)).max())
                )
            out["clicks"] += 1
    return out


def automatic_paths(device: str, scenes: int = 2, points_per_side: int = 32) -> dict:
    """AutomaticMaskGenerator with the embedded model at its engine defaults, CPU against ``device``: seconds a
    scene and masks a scene on each."""
    from sam_core.automatic_mask_generator import AutomaticMaskGenerator

    images = [scene(seed, 256)[0] for seed in split_seeds("val", scenes)]
    out = {"scenes": scenes, "points_per_side": points_per_side}
    for key, where in (("cpu", "cpu"), ("device", device)):
        generator = AutomaticMaskGenerator(load_embedded().to(where).eval(), points_per_side=points_per_side)
        generator.generate(images[0])  # warm-up
        _sync(where)
        started = time.perf_counter()
        counts = [len(generator.generate(image)) for image in images]
        _sync(where)
        out[key] = {
            "seconds_per_scene": round((time.perf_counter() - started) / scenes, 3),
            "masks_per_scene": float(np.mean(counts)),
        }
    out["speedup"] = round(out["cpu"]["seconds_per_scene"] / out["device"]["seconds_per_scene"], 2)
    return out


def vit_b_encoder(device: str, repeats: int = 5) -> dict:
    """A ViT-B image encoder (random weights: the official architecture, 1024 px) on ``device``: seconds an
    image in fp32 and in bf16 autocast, batch 1."""
    from sam_core.build import build_sam

    encoder = build_sam("vit_b").image_encoder.to(device).eval()
    x = torch.randn(1, 3, 1024, 1024, device=device)
    out = {}
    for mode, bf16 in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), _autocast(device, bf16):
            encoder(x)
            _sync(device)
            started = time.perf_counter()
            for _ in range(repeats):
                encoder(x)
            _sync(device)
        out[f"{mode}_seconds"] = round((time.perf_counter() - started) / repeats, 4)
    return out


def speed_probe(device: str, images_per_step: int, workers: int, steps: int) -> dict:
    """Seconds a training step of the embedded recipe at ``images_per_step``, bf16 autocast and fp32, from the
    installed weights (a throwaway trainer: the weights it changes are not kept)."""
    recipe = dataclasses.replace(EMBEDDED_RECIPE, images_per_step=images_per_step, steps=10_000)
    trainer = Trainer(recipe, device=device, data_workers=workers)
    try:
        trainer.model.load_state_dict(read_checkpoint(EMBEDDED_CHECKPOINT)["model"])
        out = {}
        for mode, bf16 in (("bf16", True), ("fp32", False)):
            with _autocast(device, bf16):
                for _ in range(2):  # warm-up: kernels chosen, workers started
                    trainer.step()
                _sync(device)
                started = time.perf_counter()
                for _ in range(steps):
                    trainer.step()
                _sync(device)
            out[f"{mode}_seconds_per_step"] = round((time.perf_counter() - started) / steps, 4)
        return out
    finally:
        trainer.close()


def train(
    out_dir: Path, device: str, bf16: bool, seconds: float, seconds_per_step: float, args: argparse.Namespace
) -> dict:
    """Go on training the installed weights for ``seconds``; returns what the run did."""
    installed = read_checkpoint(EMBEDDED_CHECKPOINT)
    start = int(installed["metadata"]["steps"])
    validations = 6
    # The validations run on the CPU (about 5 s each on 2 cores): leave them their time.
    steps = max(10, int(0.9 * (seconds - validations * 8) / seconds_per_step))
    # Warmup, the peak, then a cosine over the second half of the new steps.
    warmup = min(200, steps // 5)
    decay_fraction = min(1.0, 0.5 * steps / (start + steps - warmup))
    recipe = dataclasses.replace(
        EMBEDDED_RECIPE,
        images_per_step=args.images_per_step,
        steps=start + steps,
        warmup_steps=warmup,
        decay_fraction=decay_fraction,
        checkpoint_every=max(50, steps // 4),
        log_every=max(10, steps // 40),
        metadata={**EMBEDDED_RECIPE.metadata, "trained_on": machine(device).get("gpu", device), "bf16": bf16},
    )
    run_dir = Path(args.run_dir)
    log.info(
        "training %d steps from step %d (%s, %.3f s a step measured)",
        steps,
        start,
        "bf16" if bf16 else "fp32",
        seconds_per_step,
    )
    best = train_embedded.run(
        run_dir,
        recipe,
        seconds / 3600,
        max(1, steps // validations),
        True,
        device,
        bf16,
        val_scenes=args.val_scenes,
        data_workers=args.workers,
    )
    for name in ("curve.jsonl", "changes.jsonl"):
        if (run_dir / name).exists():
            (out_dir / name).write_text((run_dir / name).read_text())
    result = {"planned_steps": steps, "from_step": start, "bf16": bf16}
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    result["reached_step"] = int(state["step"])
    result["train_seconds"] = round(
        float(state["seconds"]) - float(installed["metadata"].get("wall_seconds", 0)), 1
    )
    if best.exists():
        checkpoint = torch.load(best, map_location="cpu", weights_only=False)
        checkpoint["model"] = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint["model"].items()
        }
        atomic_save(checkpoint, out_dir / "best_fp16.pt")
        result["best"] = checkpoint["metadata"]["metrics"]["validation"]
    else:
        result["best"] = None  # no validation beat the installed weights'
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole session")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images-per-step", type=int, default=8)
    parser.add_argument("--workers", type=int, default=10, help="processes drawing the training scenes")
    parser.add_argument("--probe-steps", type=int, default=15)
    parser.add_argument("--val-scenes", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=4, help="CPU threads for the validations and the CPU side"
    )
    parser.add_argument("--run-dir", default="/tmp/gpu_session_run")
    parser.add_argument("--skip-checks", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "train.log")],
    )
    torch.set_num_threads(args.threads)
    report: dict = {"budget_seconds": args.budget}

    def phase(name: str, fn, *fn_args):
        t = time.monotonic()
        try:
            report[name] = fn(*fn_args)
        except Exception as error:  # one phase failing must not cost the others their minutes
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        report.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t, 1)
        log.info("%s: %s", name, json.dumps(report[name])[:2000])
        (args.out / "session.json").write_text(json.dumps(report, indent=2))

    phase("machine", machine, args.device)
    if not args.skip_checks:
        phase("predictor", predictor_paths, args.device)
        phase("automatic", automatic_paths, args.device)
        phase("vit_b_encoder", vit_b_encoder, args.device)
    phase("speed_probe", speed_probe, args.device, args.images_per_step, args.workers, args.probe_steps)
    probe = report["speed_probe"]
    if "error" in probe:
        bf16, per_step = True, 0.5  # a guess; the time budget bounds the run anyway
    else:
        bf16 = probe["bf16_seconds_per_step"] <= probe["fp32_seconds_per_step"]
        per_step = min(probe["bf16_seconds_per_step"], probe["fp32_seconds_per_step"])
    left = args.budget - (time.monotonic() - started) - 25  # the export and a margin
    phase("train", train, args.out, args.device, bf16, left, per_step, args)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    (args.out / "session.json").write_text(json.dumps(report, indent=2))
    log.info("done in %.0f s", report["total_seconds"])


if __name__ == "__main__":
    main()
