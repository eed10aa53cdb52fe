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
    panel: tuple[int, int] = (300, 180),
    columns: int = 3,
) -> Image.Image:
    """Small multiples: one panel per series, each a line over the x ``labels`` with its own y range and every
    point's value written beside it (series of different units never share an axis)."""
    names = list(series)
    rows = max(1, -(-len(names) // columns))
    pw, ph = panel
    picture = Image.new("RGB", (pw * columns, 30 + ph * rows), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((10, 8), title, fill="black")
    for k, name in enumerate(names):
        x0, y0 = (k % columns) * pw, 30 + (k // columns) * ph
        left, top, width, height = x0 + 30, y0 + 22, pw - 50, ph - 50
        colour = tuple(int(c) for c in PALETTE[k % len(PALETTE)])
        draw.text((x0 + 10, y0 + 4), name, fill=colour)
        draw.rectangle([left, top, left + width, top + height], outline=(170, 170, 170))
        n = max(len(labels), 1)
        xs = [left + width * (i + 0.5) / n for i in range(n)]
        for x, label in zip(xs, labels, strict=True):
            draw.text((x - 3 * len(label), top + height + 4), label, fill="black")
        values = series[name]
        known = [v for v in values if v is not None and np.isfinite(v)]
        if not known:
            draw.text((left + 8, top + height / 2 - 6), "no data", fill=(150, 150, 150))
            continue
        lo, hi = min(known), max(known)
        pad = (hi - lo) * 0.15 or (abs(hi) * 0.1 or 1.0)
        lo, hi = lo - pad, hi + pad
        points = [
            (xs[i], top + height - height * (v - lo) / (hi - lo), v)
            for i, v in enumerate(values)
            if v is not None and np.isfinite(v)
        ]
        if len(points) > 1:
            draw.line([(x, y) for x, y, _ in points], fill=colour, width=2)
        for x, y, v in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 5, y - 14), f"{v:.3g}", fill="black")
    return picture
