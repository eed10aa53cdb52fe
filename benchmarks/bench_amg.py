"""Automatic mask generation: ours against Meta's SamAutomaticMaskGenerator, same weights, image, parameters.

The image encoder is excluded: the embedding is computed once and handed to both generators (ours through
generate_from_embedding, the reference by replacing its predictor's set_image with a setter of the cached
features). Weights are random vit_b, copied into both models. Random weights give near-zero logits and
predicted IoUs near 0, and every mask spans the image, so the thresholds below are chosen to let a
realistic number of masks through (~150 of 3 x points candidates) and box NMS is off (1.0): identical boxes
would otherwise collapse to one mask.

Memory: peak resident set size (VmHWM from /proc/self/status, reset through /proc/self/clear_refs before each
run) minus the resident size just before the run; this sees torch's allocations, which tracemalloc does not.

    .venv/bin/python benchmarks/bench_amg.py [--points-per-side 16] [--repeats 2] [--size 600x800]

The last line is the time ratio ours / reference (median over repeats, runs interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

PARAMS = {
    "pred_iou_thresh": 0.03,
    "stability_score_thresh": 0.7,
    "stability_score_offset": 0.02,
    "box_nms_thresh": 1.0,
    "points_per_batch": 64,
    "output_mode": "coco_rle",
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn):
    """(result, wall seconds, process CPU seconds, peak RSS increase in MiB) of fn().

    CPU seconds are less disturbed than wall time when other jobs share the cores."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return result, seconds, cpu, (_status_kib("VmHWM") - before) / 1024


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes on a shaded background (content matters little to random weights)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = 128 + 60 * np.stack([np.sin(xx / 37 + i) * np.cos(yy / 29 - i) for i in range(3)], -1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 120)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.integers(0, 256, 3)
    return image.clip(0, 255).astype(np.uint8)


def match_rates(ref_records, our_records, min_iou=0.95):
    from pycocotools import mask as coco_mask

    if not ref_records or not our_records:
        return float(not ref_records and not our_records), float(not ref_records and not our_records)
    a = [r["segmentation"] for r in ref_records]
    b = [r["segmentation"] for r in our_records]
    iou = coco_mask.iou(a, b, [0] * len(b))
    return float((iou.max(1) >= min_iou).mean()), float((iou.max(0) >= min_iou).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default="600x800", help="image H x W")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))

    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from sam_core import build_sam
    from sam_core.automatic_mask_generator import AutomaticMaskGenerator

    torch.manual_seed(0)
    ref_model = sam_model_registry["vit_b"]().eval()
    our_model = build_sam("vit_b")
    our_model.load_state_dict(ref_model.state_dict())
    our_model.eval()

    image = test_image(height, width)
    params = {"points_per_side": args.points_per_side, **PARAMS}
    ours = AutomaticMaskGenerator(our_model, **params)
    ref = SamAutomaticMaskGenerator(ref_model, **params)

    start = time.perf_counter()
    ours.predictor.set_image(image)
    embedding = ours.predictor.get_image_embedding().clone()
    print(f"encoder (excluded from the timings, once): {time.perf_counter() - start:.1f} s")

    def ref_set_image(crop: np.ndarray) -> None:
        p = ref.predictor
        p.reset_image()
        p.features = embedding
        p.original_size = crop.shape[:2]
        p.input_size = p.transform.get_preprocess_shape(*crop.shape[:2], ref_model.image_encoder.img_size)
        p.is_image_set = True

    ref.predictor.set_image = ref_set_image

    print(f"image {height}x{width}, random vit_b weights, {args.points_per_side**2} points, params: {params}")
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (interleaved)")
    times = {"reference": [], "ours": []}
    cpu_times = {"reference": [], "ours": []}
    peaks = {"reference": [], "ours": []}
    results = {}
    for i in range(args.repeats):
        for name, run in (
            ("reference", lambda: ref.generate(image)),
            ("ours", lambda: ours.generate_from_embedding(embedding, (height, width))),
        ):
            records, seconds, cpu, peak = measure(run)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            peaks[name].append(peak)
            results[name] = records
            print(
                f"  run {i + 1} {name:9s}: {seconds:7.2f} s wall, {cpu:7.2f} s CPU, "
                f"peak RSS +{peak:7.1f} MiB, {len(records)} masks"
            )

    ref_rate, our_rate = match_rates(results["reference"], results["ours"])
    for name in ("reference", "ours"):
        print(
            f"{name:9s}: median {statistics.median(times[name]):7.2f} s/image wall (min {min(times[name]):.2f}), "
            f"{statistics.median(cpu_times[name]):.2f} s CPU, "
            f"peak RSS +{max(peaks[name]):.1f} MiB, {len(results[name])} masks"
        )
    print(f"match at mask IoU >= 0.95: {ref_rate:.1%} of the reference's masks, {our_rate:.1%} of ours")
    cpu_ratio = statistics.median(cpu_times["ours"]) / statistics.median(cpu_times["reference"])
    print(f"CPU time ratio ours/reference: {cpu_ratio:.3f}")
    ratio = statistics.median(times["ours"]) / statistics.median(times["reference"])
    print(f"time ratio ours/reference: {ratio:.3f}")


if __name__ == "__main__":
    main()
