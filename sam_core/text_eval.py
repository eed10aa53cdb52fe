"""Held-out figures of a text-prompted model on synthetic scenes, as issue #19 asks for them.

Each phrase is the only prompt (text alone, the single-mask output); per scene all phrases go through the
decoder in one pass. Three families:
- phrases that name one object (kind "one", and "part" phrases naming a single part): mIoU of the mask;
- phrases that name several ("several", "part" with two or more parts): instance recall at IoU 0.5, the
  predicted instances being the connected pieces of the mask (at least MIN_PIECE px): one phrase gives one
  mask, so instances that touch come out as one piece and are missed, which this figure counts against it;
- phrases absent from the image: presence accuracy (presence probability < 0.5), and beside it the presence
  accuracy of the phrases that are there, so that a model answering "absent" to everything does not look good.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from sam_core.mask_utils import binary_iou
from sam_core.phrases import scene_phrases
from sam_core.sam import Sam
from sam_core.synthetic import make_scene
from sam_core.text_encoder import TextEncoder
from sam_core.train import encode
from sam_core.train_data import pad_to, resize_longest_side

MIN_PIECE = 16  # px of the scene: smaller connected pieces of a mask are noise, not instances
# The floors on held-out scenes.
FLOORS = {"miou_one": 0.7, "recall_several@0.5": 0.8, "presence_accuracy_absent": 0.9}


@torch.no_grad()
def predict_phrases(model: Sam, text_encoder: TextEncoder, image: np.ndarray, texts: list[str]):
    """Masks (B x H x W bool at the image's size) and presence probabilities (B) of B phrases on one image
    (H x W x 3 uint8), text alone as the prompt."""
    size = model.image_encoder.img_size
    resized = resize_longest_side(image, size, cv2.INTER_LINEAR)
    pixels = torch.from_numpy(pad_to(resized, size)).permute(2, 0, 1).float()[None].to(model.device)
    embedding = encode(model, pixels)
    text = text_encoder.encode(texts).to(model.device, torch.float32)
    sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=None, text=text)
    low_res, _, presence = model.mask_decoder(
        embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False, presence=True
    )
    masks = model.postprocess_masks(low_res, resized.shape[:2], image.shape[:2])[:, 0] > model.mask_threshold
    return masks.cpu().numpy(), torch.sigmoid(presence).cpu().numpy()


def instance_recall(pred: np.ndarray, instances: list[np.ndarray], iou: float = 0.5) -> int:
    """How many of ``instances`` (H x W bool each) a connected piece of ``pred`` matches at ``iou`` or more, one
    piece for at most one instance (greedy, best IoU first)."""
    count, labels = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
    pieces = [labels == k for k in range(1, count) if (labels == k).sum() >= MIN_PIECE]
    pairs = sorted(
        ((binary_iou(p, g), i, j) for i, p in enumerate(pieces) for j, g in enumerate(instances)),
        reverse=True,
    )
    used_pieces, matched = set(), set()
    for value, i, j in pairs:
        if value < iou:
            break
        if i not in used_pieces and j not in matched:
            used_pieces.add(i)
            matched.add(j)
    return len(matched)


def evaluate_text(
    model: Sam, text_encoder: TextEncoder, seeds: list[int], per_kind: int = 3, scene_size: int = 256
) -> dict:
    """The figures over the scenes of ``seeds`` (see the module docstring): miou_one, recall_several@0.5,
    presence_accuracy_absent, presence_accuracy_present, mIoU per kind, and the counts behind each."""
    model.eval()
    text_encoder.eval()
    one, several_found, several_total = [], 0, 0
    absent_right, present_right = [], []
    by_kind: dict[str, list[float]] = {}
    for seed in seeds:
        scene = make_scene(seed, scene_size)
        phrases = scene_phrases(scene, seed, per_kind)
        if not phrases:
            continue
        masks, presence = predict_phrases(model, text_encoder, scene.image, [p.text for p in phrases])
        for phrase, mask, probability in zip(phrases, masks, presence, strict=True):
            if not phrase.present:
                absent_right.append(probability < 0.5)
                continue
            present_right.append(probability >= 0.5)
            if len(phrase.masks) == 1:
                value = binary_iou(mask, phrase.masks[0])
                one.append(value)
                by_kind.setdefault(phrase.kind, []).append(value)
            else:
                several_found += instance_recall(mask, list(phrase.masks))
                several_total += len(phrase.masks)
                union = np.any(np.stack(phrase.masks), axis=0)
                by_kind.setdefault(phrase.kind, []).append(binary_iou(mask, union))
    return {
        "scenes": len(seeds),
        "miou_one": float(np.mean(one)) if one else 0.0,
        "phrases_one": len(one),
        "recall_several@0.5": several_found / several_total if several_total else 0.0,
        "instances_several": several_total,
        "presence_accuracy_absent": float(np.mean(absent_right)) if absent_right else 0.0,
        "phrases_absent": len(absent_right),
        "presence_accuracy_present": float(np.mean(present_right)) if present_right else 0.0,
        "phrases_present": len(present_right),
        "miou_by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
    }


def format_text_table(metrics: dict) -> str:
    """The figures as a Markdown table beside the issue's floors."""
    rows = [
        ("mIoU, phrases naming one object", "miou_one", f"{metrics['phrases_one']} phrases"),
        (
            "instance recall @ IoU 0.5, phrases naming several",
            "recall_several@0.5",
            f"{metrics['instances_several']} instances",
        ),
        (
            "presence accuracy, absent phrases",
            "presence_accuracy_absent",
            f"{metrics['phrases_absent']} phrases",
        ),
        (
            "presence accuracy, present phrases",
            "presence_accuracy_present",
            f"{metrics['phrases_present']} phrases",
        ),
    ]
    lines = [
        f"{metrics['scenes']} scenes",
        "",
        "| figure | value | floor | over |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, over in rows:
        floor = FLOORS.get(key)
        lines.append(f"| {label} | {metrics[key]:.3f} | {floor if floor is not None else '-'} | {over} |")
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in metrics["miou_by_kind"].items())
    lines += ["", f"mask IoU by phrase kind (the union of what a phrase names): {kinds}"]
    return "\n".join(lines)
