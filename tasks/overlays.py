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
    ranges: dict[str, tuple[float, float]] | None = None,
    bands: dict[str, list[float | None]] | None = None,
) -> Image.Image:
    """Small multiples: one panel per series, each a line over the x ``labels`` with its own y axis (three labelled
    ticks) and every point's value written beside it (series of different units never share an axis).

    ``ranges``: a fixed (low, high) y range per series (e.g. (0, 1) for an IoU); otherwise the axis runs from 0 (or
    the lowest value, if negative) to a little above the highest, so a small change looks small. ``bands``: per
    series, a +- half-width per point (e.g. the spread between training seeds), drawn as a shaded band.
    """
    ranges, bands = ranges or {}, bands or {}
    names = list(series)
    rows = max(1, -(-len(names) // columns))
    pw, ph = panel
    picture = Image.new("RGB", (pw * columns, 30 + ph * rows), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((10, 8), title, fill="black")
    for k, name in enumerate(names):
        x0, y0 = (k % columns) * pw, 30 + (k // columns) * ph
        left, top, width, height = x0 + 40, y0 + 22, pw - 60, ph - 50
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
        half_widths = bands.get(name) or [None] * len(values)
        lo, hi = ranges.get(name) or _axis_range(values, half_widths)

        def y_of(v: float, top=top, height=height, lo=lo, hi=hi) -> float:
            return top + height - height * (v - lo) / (hi - lo)

        for tick in (lo, (lo + hi) / 2, hi):
            y = y_of(tick)
            draw.line([(left, y), (left + width, y)], fill=(235, 235, 235))
            draw.text((x0 + 4, y - 6), f"{tick:.3g}", fill=(110, 110, 110))
        band = [
            (xs[i], v, b)
            for i, (v, b) in enumerate(zip(values, half_widths, strict=True))
            if v is not None and b is not None and np.isfinite(v) and np.isfinite(b)
        ]
        if band:
            shade = tuple(int(255 - 0.25 * (255 - c)) for c in colour)
            upper = [(x, y_of(min(hi, v + b))) for x, v, b in band]
            lower = [(x, y_of(max(lo, v - b))) for x, v, b in reversed(band)]
            if len(band) == 1:
                x, y_up, y_down = upper[0][0], upper[0][1], lower[0][1]
                draw.rectangle([x - 6, y_up, x + 6, y_down], fill=shade)
            else:
                draw.polygon(upper + lower, fill=shade)
        points = [(xs[i], y_of(v), v) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
        if len(points) > 1:
            draw.line([(x, y) for x, y, _ in points], fill=colour, width=2)
        for x, y, v in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 5, y - 14), f"{v:.3g}", fill="black")
    return picture


def _axis_range(values: list[float | None], half_widths: list[float | None]) -> tuple[float, float]:
    """(low, high) of a y axis that starts at 0 (or below, for negative values) and leaves room above the highest
    value and its band. ``values`` holds at least one finite number."""
    pairs = [
        (v, b or 0.0) for v, b in zip(values, half_widths, strict=True) if v is not None and np.isfinite(v)
    ]
    lo = min(0.0, min(v for v, _ in pairs))
    hi = max(v + b for v, b in pairs)
    hi = hi + 0.15 * (hi - lo) if hi > lo else lo + 1.0
    return lo, hi
