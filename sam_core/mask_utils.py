"""Mask utilities: the IoU of two masks, and for automatic mask generation scores, boxes, NMS, COCO run-length
encoding, cleanup.

Conventions shared with Meta's reference (so records are interchangeable):
- masks are boolean, N x H x W (torch or numpy); boxes are XYXY with *inclusive* right/bottom pixel indices
  (a 1-pixel mask at (x, y) has the box [x, y, x, y]); an empty mask has the box [0, 0, 0, 0].
- uncompressed RLE is ``{"size": [H, W], "counts": [int, ...]}`` over the column-major (Fortran) flattening,
  starting with a run of zeros (possibly of length 0); compressed RLE is pycocotools' ``counts`` string.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RLE = dict[str, Any]


def stability_score(
    mask_logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of the masks binarised at ``mask_threshold + offset`` and ``mask_threshold - offset``.

    mask_logits: N x H x W (or any ... x H x W) logits. Returns a float32 tensor of shape (...,).
    The high-threshold mask lies inside the low-threshold one, so the IoU is a ratio of pixel counts.
    A mask empty even at the low threshold gets NaN (0/0), as in the reference; NaN fails any threshold.
    """
    # Exact integer counts. Row sums first, in int16 while a row fits (W < 2**15): torch's bool -> int
    # reduction over both pixel axes at once is about 100x slower on CPU than two 1-D reductions.
    row_dtype = torch.int16 if mask_logits.shape[-1] < 2**15 else torch.int32

    def count(binary: torch.Tensor) -> torch.Tensor:
        return binary.sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)

    inner = count(mask_logits > (mask_threshold + threshold_offset))
    outer = count(mask_logits > (mask_threshold - threshold_offset))
    return inner / outer


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive pixel indices, int64) around boolean masks ... x H x W -> ... x 4.

    Empty masks give [0, 0, 0, 0].
    """
    if masks.dim() < 2:
        raise ValueError(f"masks must be ... x H x W, got shape {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(-1, h, w)
    rows = flat.any(dim=-1)  # N x H: which rows hold a mask pixel
    cols = flat.any(dim=-2)  # N x W
    # argmax returns the first maximal index: the first True from each end gives the extreme pixels.
    top = rows.to(torch.uint8).argmax(dim=-1)
    bottom = h - 1 - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    left = cols.to(torch.uint8).argmax(dim=-1)
    right = w - 1 - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1).to(torch.int64)
    boxes[~rows.any(dim=-1)] = 0
    return boxes.reshape(*lead, 4)


def box_xyxy_to_xywh(box: Any) -> list:
    """One XYXY box (sequence of 4 numbers) -> [x, y, w, h] as plain Python numbers, w = x1 - x0."""
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two HxW bool masks; 1.0 when both are empty (they agree everywhere)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY box (4,) with each of N x 4 boxes -> N float32 (area = (x1 - x0) * (y1 - y0)).

    Two zero-area boxes give NaN (0/0), which compares False against any threshold, as in torchvision.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area0 = (box[2] - box[0]) * (box[3] - box[1])
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area0 + area - inter)


def box_nms(boxes: Any, scores: Any, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices (int64) in decreasing score order.

    boxes: N x 4 XYXY; scores: N. A box is dropped when its IoU with a kept, higher-scored box is
    > iou_threshold. Ties in score keep the input order (a stable sort), which matters when scores are
    shared, e.g. one score per crop in cross-crop NMS. Matches ``torchvision.ops.nms``.
    Cost O(N * kept) time, O(N) memory.
    """
    boxes = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float32)
    scores = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(f"box_nms needs boxes N x 4 and scores N, got {boxes.shape} and {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    ordered = boxes[order]
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        # Compare in float64 as torchvision does (a float32 IoU of 0.30000001 exceeds a threshold of 0.3).
        suppressed[i + 1 :] |= box_iou(ordered[i], ordered[i + 1 :]).astype(np.float64) > float(iou_threshold)
    return order[np.asarray(keep, dtype=np.int64)]


def masks_to_rle(masks: Any) -> list[RLE]:
    """Uncompressed COCO RLE of each boolean mask in N x H x W (torch or numpy), vectorised over pixels."""
    m = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {m.shape}")
    n, h, w = m.shape
    if n == 0:
        return []
    # Column-major flattening: COCO RLE runs down the columns.
    flat = np.ascontiguousarray(m.astype(bool, copy=False).transpose(0, 2, 1)).reshape(n, h * w)
    if h * w == 0:
        return [{"size": [h, w], "counts": [0]} for _ in range(n)]
    change_mask, change_pos = np.nonzero(flat[:, 1:] != flat[:, :-1])
    # Per mask: run boundaries are 0, each change + 1, and h*w; runs start with zeros.
    splits = np.searchsorted(change_mask, np.arange(1, n))
    starts_with_one = flat[:, 0]
    out = []
    for i, pos in enumerate(np.split(change_pos + 1, splits)):
        bounds = np.concatenate(([0], pos, [h * w]))
        counts = np.diff(bounds).tolist()
        if starts_with_one[i]:
            counts.insert(0, 0)
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Boolean H x W mask from an uncompressed or compressed (pycocotools string) COCO RLE."""
    h, w = rle["size"]
    counts = rle_counts(rle)
    total = int(counts.sum())
    if total != h * w:
        raise ValueError(f"RLE counts sum to {total}, expected size {h}x{w}={h * w}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: RLE) -> int:
    """Number of foreground pixels of an uncompressed or compressed COCO RLE."""
    return int(rle_counts(rle)[1::2].sum())


def rle_counts(rle: RLE) -> np.ndarray:
    """The run lengths (int64) of an uncompressed or compressed COCO RLE."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return decode_coco_counts(counts)
    return np.asarray(counts, dtype=np.int64)


def coco_encode_rle(rle: RLE) -> RLE:
    """Uncompressed RLE -> compressed COCO RLE {"size": [H, W], "counts": str}, as pycocotools writes it."""
    return {"size": list(rle["size"]), "counts": encode_coco_counts(rle["counts"])}


def encode_coco_counts(counts: Any) -> str:
    """pycocotools' string form of run lengths: each count (from the fourth on, minus the count two before)
    as a little-endian signed sequence of 5-bit groups, 0x20 marking "more follows", offset by 48 (ASCII)."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0:
        return ""
    x = c.copy()
    x[3:] -= c[1:-2]  # pycocotools deltas only from index 3 (its ``i > 2``)
    groups, emit = [], []
    active = np.ones(x.size, dtype=bool)
    while active.any():
        g = x & 0x1F
        x = x >> 5  # arithmetic shift: negative deltas end at -1
        more = np.where(g & 0x10, x != -1, x != 0)
        groups.append(np.where(more, g | 0x20, g) + 48)
        emit.append(active)
        active = active & more
    chars = np.stack(groups, axis=1)[np.stack(emit, axis=1)]
    return chars.astype(np.uint8).tobytes().decode("ascii")


def decode_coco_counts(s: str | bytes) -> np.ndarray:
    """Inverse of :func:`encode_coco_counts`: run lengths (int64) from a pycocotools counts string."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    out = []
    p = 0
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (mode="holes") or drop islands (mode="islands") smaller than area_thresh pixels.

    mask: H x W bool. Connectivity is 8 for the region being removed. Islands mode keeps the largest
    island when every island is small, so a mask never vanishes. Returns (mask, changed).
    Needs OpenCV (opencv-python-headless).
    """
    import cv2  # lazy: only cleanup needs it

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = (mask ^ fill_holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    # Lookup table over labels (label 0 = pixels outside the working set) instead of np.isin.
    if fill_holes:
        keep = np.concatenate(([True], small))  # the mask itself plus its small holes
    else:
        keep = np.concatenate(([False], ~small))
        if not keep.any():
            keep[int(np.argmax(sizes)) + 1] = True
    return keep[regions], True
