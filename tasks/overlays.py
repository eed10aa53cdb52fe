"""Pictures for people: masks drawn over their image, and a small line plot of figures per round.

Pure PIL + numpy (matplotlib is not a dependency of the engine).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
        [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128],
    ],
    dtype=np.float32,
)  # fmt: skip


def overlay(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """image HxWx3 uint8 with each HxW bool mask tinted in its own colour (largest first, so small masks stay
    visible) and outlined."""
    out = image.astype(np.float32).copy()
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    edges = np.zeros(image.shape[:2], dtype=bool)
    for rank, i in enumerate(order):
        m = masks[i].astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * PALETTE[rank % len(PALETTE)]
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        edges |= m & ~inner
    out[edges] = 255.0
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def png_data_uri(picture: Image.Image, max_side: int = 256) -> str:
    """The picture (shrunk to ``max_side``) as a data: URI, for markdown artifacts."""
    picture = picture.copy()
    picture.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def line_plot(
    series: dict[str, list[float | None]],
    labels: list[str],
    title: str,
    size: tuple[int, int] = (640, 360),
) -> Image.Image:
    """A plain line plot: one line per series over the x labels, each series scaled to its own min..max
    (the legend gives every series' first and last value), so lines of different units share one chart."""
    width, height = size
    left, right, top, bottom = 40, 20, 40, 40 + 16 * len(series)
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    draw.text((left, 10), title, fill="black")
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    n = max(len(labels), 1)
    xs = [left + (plot_w * (i + 0.5) / n) for i in range(n)]
    for x, label in zip(xs, labels, strict=True):
        draw.text((x - 3 * len(label), top + plot_h + 4), label, fill="black")
    for k, (name, values) in enumerate(series.items()):
        colour = tuple(int(c) for c in PALETTE[k % len(PALETTE)])
        known = [v for v in values if v is not None and np.isfinite(v)]
        lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
        span = (hi - lo) or 1.0
        points = [
            (xs[i], top + plot_h - plot_h * (0.1 + 0.8 * (v - lo) / span))
            for i, v in enumerate(values)
            if v is not None and np.isfinite(v)
        ]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        first, last = (f"{known[0]:.3g}", f"{known[-1]:.3g}") if known else ("-", "-")
        draw.text((left, top + plot_h + 22 + 16 * k), f"{name}: {first} -> {last}", fill=colour)
    return picture
