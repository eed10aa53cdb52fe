"""Latency of one click through the SAM ML backend over HTTP, as Label Studio sends it.

Cached: the image's embedding is in the store and in memory, so a click costs the prompt encoder + mask decoder,
brush-RLE encoding and the HTTP round trip. Reference-style: the same backend, but every click runs the image
encoder again before decoding (what a backend without an embedding cache does, e.g. the reference predictor used
as-is per request). Both are timed in the same run on the same image; the last line is the ratio of medians.

    .venv/bin/python benchmarks/bench_backend.py [--clicks 50] [--model tiny] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sam_core.embedded import EMBEDDED_CHECKPOINT  # noqa: E402
from stores import Store  # noqa: E402
from tasks.ingest import load_image  # noqa: E402
from tasks.labelstudio.ml_backend import SamBackend, build_model, serve_in_thread  # noqa: E402


class EncoderPerClickBackend(SamBackend):
    """The reference-style path: the image encoder runs on every click (no embedding cache)."""

    def _use_image(self, image_id: str) -> tuple[int, int]:
        uri, height, width = self._image(image_id)
        self.predictor.set_image(load_image(uri))
        return height, width


def _click_body(rng: np.random.Generator) -> dict:
    x, y = rng.uniform(5, 95, size=2)
    prompt = {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "is_positive": True,
        "value": {"x": float(x), "y": float(y), "width": 1, "keypointlabels": ["object"]},
    }
    return {"tasks": [{"id": 1, "data": {"image_id": "bench"}}], "params": {"context": {"result": [prompt]}}}


def time_clicks(backend: SamBackend, clicks: int, token: str, seed: int = 0) -> np.ndarray:
    """Seconds per click over HTTP (one warm-up click first, not counted)."""
    server, url = serve_in_thread(backend)
    rng = np.random.default_rng(seed)
    times = []
    try:
        with httpx.Client(base_url=url, auth=("label-studio", token), timeout=120) as http:
            for i in range(clicks + 1):
                body = _click_body(rng)
                start = time.perf_counter()
                resp = http.post("/predict", json=body)
                elapsed = time.perf_counter() - start
                resp.raise_for_status()
                if not resp.json()["results"][0]["result"]:
                    raise RuntimeError("the backend returned no mask")
                if i:
                    times.append(elapsed)
    finally:
        server.shutdown()
        server.server_close()
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--reference-clicks", type=int, default=10)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None, help="default for tiny: the embedded model's weights")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    checkpoint = args.checkpoint
    if checkpoint is None and args.model == "tiny" and EMBEDDED_CHECKPOINT.exists():
        checkpoint = str(EMBEDDED_CHECKPOINT)
    torch.manual_seed(0)
    model = build_model(args.model, checkpoint)
    model.eval()
    weights = checkpoint or "random weights"

    with tempfile.TemporaryDirectory() as tmp:
        image = (np.random.default_rng(0).random((args.height, args.width, 3)) * 255).astype(np.uint8)
        path = Path(tmp) / "bench.png"
        Image.fromarray(image).save(path)
        store = Store(f"file://{tmp}/store")
        store.write_images(
            pd.DataFrame(
                [
                    {
                        "image_id": "bench",
                        "uri": str(path),
                        "width": args.width,
                        "height": args.height,
                        "sha256": "bench",
                        "split": "train",
                    }
                ]
            )
        )
        token = "bench-token"
        with torch.inference_mode():
            cached = time_clicks(SamBackend(store, model, "bench", token=token), args.clicks, token)
            reference = time_clicks(
                EncoderPerClickBackend(store, model, "bench", token=token), args.reference_clicks, token
            )

    def line(name: str, t: np.ndarray) -> str:
        return (
            f"{name:<34} median {1000 * np.median(t):7.1f} ms   p95 {1000 * np.percentile(t, 95):7.1f} ms"
            f"   ({len(t)} clicks)"
        )

    print(
        f"model {args.model} ({weights}), image {args.height}x{args.width}, {torch.get_num_threads()} threads"
    )
    print(line("cached embedding (decoder only)", cached))
    print(line("reference-style (encoder+decoder)", reference))
    target = "met" if np.median(cached) < 0.100 else "MISSED"
    print(f"target median < 100 ms: {target}")
    print(f"ratio reference/cached median latency: {np.median(reference) / np.median(cached):.1f}x")


if __name__ == "__main__":
    main()
