"""Encoder and interactive-click time of our SamPredictor against Meta's reference, in one run.

Same random vit_b weights, same 600 x 800 image. "encoder" is set_image (resize, normalise, ViT, plus our
per-image decoder cache); "click" is one positive point answered with the single best mask at image
resolution (reference: predict(multimask_output=True) then the mask with the highest predicted IoU; ours:
predict(..., best_only=True)). Warm-up, then the median of several repeats.
The last line prints the ratios ours / reference.

    .venv/bin/python benchmarks/bench_predictor.py [--encoder-repeats 3] [--click-repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-repeats", type=int, default=3)
    parser.add_argument("--click-repeats", type=int, default=30)
    args = parser.parse_args()

    from segment_anything import SamPredictor as ReferencePredictor
    from segment_anything import sam_model_registry

    from sam_core import SamPredictor, build_sam_from_config
    from sam_core.build import CONFIGS

    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"]().eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    ours = build_sam_from_config(CONFIGS["vit_b"])
    ours.load_state_dict(reference.state_dict(), strict=True)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    point, label = np.array([[420.0, 260.0]]), np.array([1])
    ref_pred, our_pred = ReferencePredictor(reference), SamPredictor(ours)

    def ref_click():
        masks, iou, _ = ref_pred.predict(point, label, multimask_output=True)
        return masks[int(np.argmax(iou))]

    def our_click():
        return our_pred.predict(point, label, multimask_output=True, best_only=True)[0][0]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {image.shape[:2]}, vit_b random weights"
    )
    # Interleave the two so a noisy neighbour on a shared machine hits both alike.
    ref_enc, our_enc = [], []
    for _ in range(args.encoder_repeats):
        ref_enc.append(median_seconds(lambda: ref_pred.set_image(image), 1, warmup=0))
        our_enc.append(median_seconds(lambda: our_pred.set_image(image), 1, warmup=0))
    ref_encoder, our_encoder = statistics.median(ref_enc), statistics.median(our_enc)
    ref_click_s = median_seconds(ref_click, args.click_repeats, warmup=3)
    our_click_s = median_seconds(our_click, args.click_repeats, warmup=3)
    ref_click_s = min(ref_click_s, median_seconds(ref_click, args.click_repeats, warmup=0))
    our_click_s = min(our_click_s, median_seconds(our_click, args.click_repeats, warmup=0))
    agree = (ref_click() == our_click()).mean()
    print(f"encoder   reference {ref_encoder * 1e3:8.1f} ms   ours {our_encoder * 1e3:8.1f} ms")
    print(
        f"click     reference {ref_click_s * 1e3:8.1f} ms   ours {our_click_s * 1e3:8.1f} ms   (mask pixels agreeing {agree:.5f})"
    )
    print(f"ratio encoder={our_encoder / ref_encoder:.2f} click={our_click_s / ref_click_s:.2f}")


if __name__ == "__main__":
    main()
