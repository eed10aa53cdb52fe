"""Encoder and interactive-click time of our SamPredictor against Meta's reference, in one run.

Same random vit_b weights, same 600 x 800 image. "encoder" is set_image (resize, normalise, ViT, plus our
per-image decoder cache); "click" is one positive point answered with the single best mask at image
resolution (reference: predict(multimask_output=True) then the mask with the highest predicted IoU; ours:
predict(..., best_only=True)). Warm-up, then the median of several repeats.
The last line prints the ratios ours / reference.

Then the embedded model (sam_core/weights, its small convolutional encoder) on a 256 x 256 synthetic scene, against
the tiny ViT config of the same input size and embedding (its peer, random weights), measured the same way:
encoder time and one click's latency, with the ratio embedded / tiny ViT.

    .venv/bin/python benchmarks/bench_predictor.py [--encoder-repeats 3] [--click-repeats 30] [--embedded-only]
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


def encoder_and_click(
    predictor, image, point, label, encoder_repeats: int, click_repeats: int
) -> tuple[float, float]:
    """Median seconds of set_image and of one best-mask click on ``image``."""
    encoder = median_seconds(lambda: predictor.set_image(image), encoder_repeats)
    click = median_seconds(
        lambda: predictor.predict(point, label, multimask_output=True, best_only=True),
        click_repeats,
        warmup=3,
    )
    return encoder, click


def embedded_against_tiny_vit(encoder_repeats: int, click_repeats: int) -> None:
    from sam_core import SamPredictor, build_sam, load_embedded
    from sam_core.embedded import embedded_config_name
    from sam_core.synthetic import make_scene, split_seeds

    scene = make_scene(split_seeds("test", 1)[0])
    point, label = np.array([[128.0, 128.0]]), np.array([1])
    embedded, peer = SamPredictor(load_embedded()), SamPredictor(build_sam("tiny"))
    times = {}
    for name, predictor in (("embedded", embedded), ("tiny ViT", peer)):
        times[name] = encoder_and_click(predictor, scene.image, point, label, encoder_repeats, click_repeats)
    print(f"embedded model ({embedded_config_name()}) against the tiny ViT, 256 x 256 scene:")
    for name, (encoder, click) in times.items():
        print(f"{name:<10} encoder {encoder * 1e3:8.1f} ms   click {click * 1e3:8.1f} ms")
    (emb_enc, emb_click), (vit_enc, vit_click) = times["embedded"], times["tiny ViT"]
    print(f"ratio embedded/tiny_vit encoder={emb_enc / vit_enc:.2f} click={emb_click / vit_click:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-repeats", type=int, default=3)
    parser.add_argument("--click-repeats", type=int, default=30)
    parser.add_argument(
        "--embedded-only", action="store_true", help="only the embedded model against the tiny ViT"
    )
    args = parser.parse_args()
    embedded_against_tiny_vit(max(3, args.encoder_repeats), args.click_repeats)
    if args.embedded_only:
        return

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
