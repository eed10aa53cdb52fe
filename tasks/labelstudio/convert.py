"""Conversions between Label Studio's formats and the engine's.

Label Studio stores brush masks in its own run-length code (the `rle-pack` format of thi-ng/umbrella) over the
flattened RGBA canvas: a 32-bit value count, a 5-bit word size minus one, four 4-bit run-length field widths minus
one, then a stream of runs. Each run starts with one bit (1 = one repeated value, 0 = literal values), two bits that
pick a run-length field width, the run length minus one, then one word (repeat) or run-length words (literal).
The engine stores COCO compressed RLE (pycocotools, column-major). Geometry in Label Studio is in percent of the
image size, in the engine in pixels.

The codec here is vectorised with numpy: the SDK's reference implementation walks bit strings in Python and takes
seconds on a 1024 x 1024 mask. Its output is bit-identical to the SDK's `mask2rle` (a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

# Field widths for the run lengths, the same as the SDK's encoder (so encodings match bit for bit).
_RLE_SIZES = (3, 4, 8, 16)
_WORD_SIZE = 8
_MAX_RUN = 1 << 16


class BrushRLEError(ValueError):
    """A Label Studio brush RLE that cannot be decoded (truncated, wrong size, not a list of bytes)."""


def _bits_of(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate big-endian bit fields: values[i] written in widths[i] bits (each <= 32). Returns 0/1 uint8.

    Each field is shifted to the top of a big-endian uint32 and unpacked to 32 bits, of which the first widths[i]
    are kept: a few passes over n x 32 bytes, instead of one Python step per bit.
    """
    widths = np.asarray(widths, dtype=np.int64)
    shifted = (np.asarray(values, dtype=np.uint64) << (32 - widths).astype(np.uint64)).astype(">u4")
    bits = np.unpackbits(shifted.view(np.uint8)).reshape(-1, 32)
    return bits[np.arange(32)[None, :] < widths[:, None]]


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Encode a binary mask (H x W, bool or 0/1 or 0/255) as Label Studio brush RLE (a list of byte values).

    Every pixel becomes four RGBA values of 0 or 255, as Label Studio's own export does.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    flat = np.where(mask.ravel() > 0, 255, 0).astype(np.int64)
    n_pixels = flat.size
    num = 4 * n_pixels
    # Runs over pixels; each pixel repeats 4 times, so channel runs are 4x the pixel runs.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change)) if n_pixels else np.zeros(0, dtype=np.int64)
    ends = np.concatenate((change, [n_pixels])) if n_pixels else np.zeros(0, dtype=np.int64)
    run_len = 4 * (ends - starts)
    run_val = flat[starts]
    # Runs longer than 2**16 are cut into chunks of 2**16 (the widest field holds length - 1 in 16 bits).
    n_chunks = np.maximum(1, -(-run_len // _MAX_RUN))
    chunk_val = np.repeat(run_val, n_chunks)
    chunk_len = np.full(int(n_chunks.sum()), _MAX_RUN, dtype=np.int64)
    last = np.cumsum(n_chunks) - 1
    chunk_len[last] = run_len - (n_chunks - 1) * _MAX_RUN
    # Field width index: <=8 -> 0 (3 bits), <=16 -> 1 (4 bits), <=256 -> 2 (8 bits), else 3 (16 bits).
    size_idx = np.select([chunk_len <= 8, chunk_len <= 16, chunk_len <= 256], [0, 1, 2], 3)
    len_bits = np.asarray(_RLE_SIZES)[size_idx]
    # One field per run: flag 1 (1 bit), size index (2 bits), length - 1 (len_bits), value (8 bits).
    run_widths = 3 + len_bits + _WORD_SIZE
    run_fields = (
        (1 << (run_widths - 1)) | (size_idx << (run_widths - 3)) | ((chunk_len - 1) << _WORD_SIZE) | chunk_val
    )
    header_vals = np.array([num, _WORD_SIZE - 1, *[s - 1 for s in _RLE_SIZES]], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    bits = _bits_of(np.concatenate([header_vals, run_fields]), np.concatenate([header_widths, run_widths]))
    # The SDK always appends 1-8 zero bits (8 when already aligned); keep that so encodings match exactly.
    bits = np.concatenate([bits, np.zeros(8 - len(bits) % 8, dtype=np.uint8)])
    return np.packbits(bits).tolist()


class _BitReader:
    """Reads big-endian unsigned fields from a 0/1 array."""

    def __init__(self, bits: np.ndarray):
        self.bits = bits
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > len(self.bits):
            raise BrushRLEError(f"brush RLE is truncated: needs bit {end}, has {len(self.bits)}")
        value = 0
        for b in self.bits[self.pos : end].tolist():
            value = (value << 1) | b
        self.pos = end
        return value

    def read_many(self, count: int, width: int) -> np.ndarray:
        end = self.pos + count * width
        if end > len(self.bits):
            raise BrushRLEError(f"brush RLE is truncated: needs bit {end}, has {len(self.bits)}")
        chunk = self.bits[self.pos : end].reshape(count, width).astype(np.int64)
        self.pos = end
        return chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Decode Label Studio brush RLE to the flat array of channel values (length 4 * H * W, uint8)."""
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise BrushRLEError(f"brush RLE must be a list of byte values, got {type(rle).__name__}") from exc
    if data.ndim != 1 or data.size < 6 or data.min() < 0 or data.max() > 255:
        raise BrushRLEError("brush RLE must be a non-empty list of byte values (0-255)")
    reader = _BitReader(np.unpackbits(data.astype(np.uint8)))
    num = reader.read(32)
    word_size = reader.read(5) + 1
    rle_sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeated = reader.read(1)
        j = i + 1 + reader.read(rle_sizes[reader.read(2)])
        if j > num:
            raise BrushRLEError(f"brush RLE run overflows: ends at {j}, image has {num} values")
        if repeated:
            out[i:j] = reader.read(word_size)
        else:
            out[i:j] = reader.read_many(j - i, word_size)
        i = j
    return out


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int, threshold: int = 128) -> np.ndarray:
    """Decode Label Studio brush RLE to a bool mask (H x W), from the alpha channel.

    A browser's canvas may anti-alias the brush edge, so alpha >= threshold (of 255) counts as inside.
    """
    flat = decode_brush_rle(rle)
    if flat.size != 4 * height * width:
        raise BrushRLEError(
            f"brush RLE holds {flat.size} values, expected 4 * {height} * {width} = {4 * height * width}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] >= threshold


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """Encode a bool mask (H x W) as COCO compressed RLE: {"size": [H, W], "counts": str}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def coco_rle_to_mask(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """Decode COCO compressed RLE counts to a bool mask (H x W)."""
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)


def brush_rle_to_coco_rle(rle: Sequence[int], height: int, width: int) -> dict:
    """Label Studio brush RLE -> COCO compressed RLE ({"size", "counts"})."""
    return mask_to_coco_rle(brush_rle_to_mask(rle, height, width))


def coco_rle_to_brush_rle(counts: str | bytes, height: int, width: int) -> list[int]:
    """COCO compressed RLE counts -> Label Studio brush RLE."""
    return mask_to_brush_rle(coco_rle_to_mask(counts, height, width))


def percent_to_pixels(x_pct: float, y_pct: float, width: int, height: int) -> tuple[float, float]:
    """A point in percent of the image (Label Studio) -> pixel coordinates (x right, y down)."""
    return x_pct * width / 100.0, y_pct * height / 100.0


def pixels_to_percent(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """A point in pixels -> percent of the image (Label Studio)."""
    return 100.0 * x / width, 100.0 * y / height


def rect_percent_to_box(value: dict, width: int, height: int) -> list[float]:
    """A rectanglelabels value {x, y, width, height} in percent -> box [x0, y0, x1, y1] in pixels.

    Rotated rectangles are not supported: their axis-aligned box would be a different prompt.
    """
    if float(value.get("rotation", 0) or 0) != 0:
        raise ValueError(f"rotated rectangles are not supported (rotation={value['rotation']})")
    x0, y0 = percent_to_pixels(float(value["x"]), float(value["y"]), width, height)
    w, h = percent_to_pixels(float(value["width"]), float(value["height"]), width, height)
    return [x0, y0, x0 + w, y0 + h]


def box_to_rect_percent(box: Sequence[float], width: int, height: int) -> dict:
    """A box [x0, y0, x1, y1] in pixels -> rectanglelabels value {x, y, width, height} in percent."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x, y = pixels_to_percent(x0, y0, width, height)
    w, h = pixels_to_percent(x1 - x0, y1 - y0, width, height)
    return {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
