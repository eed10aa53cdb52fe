"""Evaluation as in the SAM paper, on any model with the Sam interface.

- Interactive: per ground-truth mask, the first click at the point farthest from the object boundary, each next
  click at the point farthest from the boundary of the error region (positive on a false negative, negative on
  a false positive), the previous low-res logits fed back as the mask prompt. mIoU after 1, 2, 3, 5, 9 clicks;
  NoC@85 / NoC@90 (clicks needed to reach that IoU, capped at the click budget, which counts as failure).
  After one click the model gives 3 masks: "confident" keeps the one with the highest predicted IoU (what a
  user sees), "oracle" the best of the three (the paper's ambiguity-aware number).
- Automatic masks: precision and recall of a list of predicted masks against ground truth at IoU 0.5 / 0.75.

    python -m sam_core.evaluate --split test --count 100 [--checkpoint path]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_core import defaults
from sam_core.automatic_mask_generator import AutomaticMaskGenerator
from sam_core.embedded import load_embedded
from sam_core.mask_utils import binary_iou
from sam_core.prompts import first_click, next_click
from sam_core.train import encode
from sam_core.train_data import SyntheticDataset, prepare_sample

CLICKS_REPORTED = (1, 2, 3, 5, 9)
# Mask areas in pixels (lower bounds) for the breakdown of interactive mIoU by object size.
AREA_BINS = (30, 100, 300, 1000, 3000)


@torch.no_grad()
def click_ious(model, embedding: torch.Tensor, gts: np.ndarray, max_clicks: int) -> dict:
    """IoU after each of ``max_clicks`` simulated clicks, for N masks of one image decoded together.

    embedding: 1xCxhxw of the padded SxS image; gts: NxSxS bool in the same frame. Returns {"confident":
    NxK array, "oracle": NxK array} (K = max_clicks; they differ only at the first click). A mask with no error
    left gets no new click (a "not a point" placeholder keeps the batch rectangular) and keeps its IoU.
    """
    n, size = gts.shape[0], gts.shape[-1]
    image_pe = model.prompt_encoder.get_dense_pe()
    coords = np.zeros((n, 0, 2), np.float32)
    labels = np.zeros((n, 0), np.int64)
    mask_input = None
    confident = np.zeros((n, max_clicks))
    oracle = np.zeros((n, max_clicks))
    done = np.zeros(n, bool)
    preds = None
    for k in range(max_clicks):
        new = np.zeros((n, 1, 2), np.float32)
        new_labels = np.full((n, 1), -1, np.int64)
        for i in range(n):
            click = first_click(gts[i]) if k == 0 else (None if done[i] else next_click(gts[i], preds[i]))
            if click is None:
                done[i] = True
            else:
                new[i, 0], new_labels[i, 0] = click[:2], click[2]
        coords, labels = np.concatenate([coords, new], 1), np.concatenate([labels, new_labels], 1)
        points = (torch.from_numpy(coords), torch.from_numpy(labels))
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, iou_pred = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=k == 0,
        )
        logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        masks = (logits > 0).numpy()
        pick = iou_pred.argmax(dim=1).numpy()
        for i in range(n):
            if k > 0 and done[i]:
                confident[i, k], oracle[i, k] = confident[i, k - 1], oracle[i, k - 1]
                continue
            ious = [binary_iou(m, gts[i]) for m in masks[i]]
            confident[i, k], oracle[i, k] = ious[pick[i]], max(ious)
        # Like an interactive user, the next click corrects the mask that was shown.
        rows = np.arange(n)
        new_preds = masks[rows, pick]
        preds = new_preds if preds is None else np.where(done[:, None, None], preds, new_preds)
        mask_input = low_res[torch.from_numpy(rows), torch.from_numpy(pick)][:, None]
    return {"confident": confident, "oracle": oracle}


def noc(ious: Sequence[float], threshold: float) -> int:
    """Number of clicks to reach ``threshold`` IoU; len(ious) if never (the budget counts as the result)."""
    for k, iou in enumerate(ious):
        if iou >= threshold:
            return k + 1
    return len(ious)


@torch.no_grad()
def evaluate_interactive(
    model,
    dataset: Sequence,
    max_clicks: int = 20,
    max_masks_per_image: int | None = None,
    min_area: int = 16,
    by_area: bool = False,
) -> dict:
    """mIoU after 1, 2, 3, 5, 9 clicks and NoC@85/90 over every usable mask of ``dataset``.

    dataset: a sequence of (image HxWx3 uint8, masks list of HxW bool). Unusable masks (empty, wrong shape) are
    counted in "skipped", never scored. ``max_masks_per_image``: score at most this many masks of each image, drawn
    with a seeded generator, so every model meets the same masks of the same dataset (None: all). ``by_area`` adds
    "by_area": the same mIoUs per bin of mask area (``area_breakdown``), which shows whether small objects or
    ambiguity hold the mean down.
    """
    model.eval()
    size = int(model.image_encoder.img_size)
    per_mask = {"confident": [], "oracle": []}
    areas = []
    skipped = {"empty_masks": 0, "shape_mismatch": 0}
    rng = np.random.default_rng(0)
    for i in range(len(dataset)):
        image, masks = dataset[i]
        limit = max_masks_per_image or len(masks)
        sample = prepare_sample(image, masks, size, limit, rng, min_area=min_area)
        for key, count in sample.skipped.items():
            skipped[key] += count
        if sample.masks.shape[0] == 0:
            continue
        embedding = encode(model, sample.image[None])
        gts = sample.masks.numpy() > 0.5
        result = click_ious(model, embedding, gts, max_clicks)
        areas.extend(gts.sum(axis=(1, 2)).tolist())
        for key in per_mask:
            per_mask[key].extend(result[key].tolist())
    if not per_mask["oracle"]:
        raise ValueError(f"no usable mask to evaluate (skipped: {skipped})")
    out = {"masks": len(per_mask["oracle"]), "images": len(dataset), "skipped": skipped}
    for key, rows in per_mask.items():
        arr = np.asarray(rows)
        for k in CLICKS_REPORTED:
            if k <= max_clicks:
                out[f"miou@{k}_{key}"] = float(arr[:, k - 1].mean())
        out[f"noc@85_{key}"] = float(np.mean([noc(r, 0.85) for r in rows]))
        out[f"noc@90_{key}"] = float(np.mean([noc(r, 0.90) for r in rows]))
    if by_area:
        out["by_area"] = area_breakdown(
            np.asarray(areas), np.asarray(per_mask["confident"]), np.asarray(per_mask["oracle"])
        )
    return out


def area_breakdown(areas: np.ndarray, confident: np.ndarray, oracle: np.ndarray) -> list[dict]:
    """Interactive mIoU per bin of mask area.

    areas: N pixel counts (at the encoder's input size); confident, oracle: NxK IoUs after each of K clicks (as
    ``click_ious`` returns). One row per non-empty bin of ``AREA_BINS``: its pixel range, the number of masks,
    confident and oracle mIoU@1 and confident mIoU after each reported click count within K.
    """
    rows = []
    edges = [*AREA_BINS, np.inf]
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (areas >= low) & (areas < high)
        if not inside.any():
            continue
        row = {
            "min_area": int(low),
            "max_area": None if np.isinf(high) else int(high),
            "masks": int(inside.sum()),
        }
        row["miou@1_oracle"] = float(oracle[inside, 0].mean())
        for k in CLICKS_REPORTED:
            if k <= confident.shape[1]:
                row[f"miou@{k}_confident"] = float(confident[inside, k - 1].mean())
        rows.append(row)
    return rows


def automatic_precision_recall(
    predicted: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    thresholds: Sequence[float] = (0.5, 0.75),
) -> dict:
    """Precision and recall of automatically generated masks (lists of HxW bool) at each IoU threshold.

    A prediction is a true positive when it matches a not-yet-matched ground truth mask at IoU >= threshold
    (greedy, highest IoU first). Returns {"precision@0.5": ..., "recall@0.5": ..., ...}.
    """
    shapes = {np.asarray(m).shape for m in list(predicted) + list(ground_truth)}
    if len(shapes) > 1:
        raise ValueError(f"predicted and ground-truth masks must share one shape, got {sorted(shapes)}")
    pixels = int(np.prod(next(iter(shapes)))) if shapes else 0
    p = np.asarray([np.asarray(m, bool).ravel() for m in predicted], dtype=np.float32).reshape(-1, pixels)
    g = np.asarray([np.asarray(m, bool).ravel() for m in ground_truth], dtype=np.float32).reshape(-1, pixels)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    out = {}
    for t in thresholds:
        matched = 0
        used_p, used_g = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), iou.shape[1])
            if iou[i, j] < t:
                break
            if i in used_p or j in used_g:
                continue
            used_p.add(i)
            used_g.add(j)
            matched += 1
        out[f"precision@{t}"] = matched / len(predicted) if len(predicted) else 0.0
        out[f"recall@{t}"] = matched / len(ground_truth) if len(ground_truth) else 0.0
    return out


@torch.no_grad()
def iou_head_reliability(
    model, dataset: Sequence, bins: int = 10, min_area: int = 30, max_masks_per_image: int = 1000
) -> list[dict]:
    """How far to trust the IoU head: for the first click (farthest from the boundary) on every mask of
    ``dataset``, each of the three outputs' predicted IoU against its true IoU, in ``bins`` equal bins of
    predicted IoU over [0, 1]. Returns one row per non-empty bin: {"bin": "0.8-0.9", "outputs", "predicted",
    "actual"} (means)."""
    model.eval()
    size = int(model.image_encoder.img_size)
    rng = np.random.default_rng(0)
    predicted, actual = [], []
    for i in range(len(dataset)):
        image, masks = dataset[i]
        sample = prepare_sample(image, masks, size, max_masks_per_image, rng, min_area=min_area)
        if sample.masks.shape[0] == 0:
            continue
        gts = sample.masks.numpy() > 0.5
        embedding = encode(model, sample.image[None])
        clicks = np.asarray([first_click(gt)[:2] for gt in gts], np.float32)[:, None]
        labels = np.ones((len(gts), 1), np.int64)
        sparse, dense = model.prompt_encoder(
            points=(torch.from_numpy(clicks), torch.from_numpy(labels)), boxes=None, masks=None
        )
        low_res, iou_pred = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        outputs = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False) > 0
        for j, gt in enumerate(gts):
            for m in range(outputs.shape[1]):
                predicted.append(float(iou_pred[j, m]))
                actual.append(binary_iou(outputs[j, m].numpy(), gt))
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    index = np.clip((predicted * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            rows.append(
                {
                    "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                    "outputs": int(chosen.sum()),
                    "predicted": float(predicted[chosen].mean()),
                    "actual": float(actual[chosen].mean()),
                }
            )
    return rows


def evaluate_automatic(
    model,
    dataset: Sequence,
    pred_iou_thresh: float = defaults.PRED_IOU_THRESH,
    stability_score_thresh: float = defaults.STABILITY_SCORE_THRESH,
    points_per_side: int = defaults.POINTS_PER_SIDE,
    min_gt_area: int = 100,
    match_iou: float = 0.5,
) -> dict:
    """Automatic masks at the given thresholds over ``dataset`` (pooled over its images): precision at mask IoU
    ``match_iou`` against every ground-truth mask, recall of the ground-truth masks of at least ``min_gt_area``
    pixels, and masks kept per image."""
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
    )
    kept = matched_predictions = matched_gt = large_gt = 0
    for i in range(len(dataset)):
        image, masks = dataset[i]
        predicted = [record["segmentation"] for record in generator.generate(image)]
        large = [m for m in masks if m.sum() >= min_gt_area]
        kept += len(predicted)
        large_gt += len(large)
        if predicted:
            all_gt = automatic_precision_recall(predicted, masks, (match_iou,))
            matched_predictions += round(all_gt[f"precision@{match_iou}"] * len(predicted))
            if large:
                matched_gt += round(
                    automatic_precision_recall(predicted, large, (match_iou,))[f"recall@{match_iou}"]
                    * len(large)
                )
    return {
        "images": len(dataset),
        "masks_per_image": kept / max(1, len(dataset)),
        f"precision@{match_iou}": matched_predictions / kept if kept else 0.0,
        f"recall@{match_iou}": matched_gt / large_gt if large_gt else 0.0,
        "pred_iou_thresh": pred_iou_thresh,
        "stability_score_thresh": stability_score_thresh,
        "points_per_side": points_per_side,
        "min_gt_area": min_gt_area,
    }


def format_table(metrics: dict) -> str:
    """The interactive metrics as a two-row text table (confident / oracle)."""
    cols = [f"miou@{k}" for k in CLICKS_REPORTED] + ["noc@85", "noc@90"]
    lines = ["choice      " + "  ".join(f"{c:>8}" for c in cols)]
    for key in ("confident", "oracle"):
        vals = [metrics.get(f"{c}_{key}") for c in cols]
        lines.append(f"{key:<12}" + "  ".join(f"{v:8.3f}" if v is not None else f"{'-':>8}" for v in vals))
    lines.append(f"masks={metrics['masks']} images={metrics['images']} skipped={metrics['skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Interactive evaluation on the synthetic benchmark.")
    parser.add_argument("--checkpoint", default=None, help="default: the embedded model")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--count", type=int, default=100, help="number of scenes")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON after the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_embedded(args.checkpoint)
    started = time.monotonic()
    metrics = evaluate_interactive(model, SyntheticDataset(args.split, count=args.count), args.max_clicks)
    print(format_table(metrics))
    print(f"split={args.split} scenes={args.count} seconds={time.monotonic() - started:.1f}")
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
