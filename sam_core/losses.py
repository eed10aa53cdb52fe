"""Losses of SAM's interactive training: focal + dice on mask logits (20:1), MSE on the IoU head, and the
minimum over the three outputs of an ambiguous prompt. Every function returns one value per mask so the caller
chooses how to reduce."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: logits, target ...xHxW (target 0/1 float) -> ...."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over pixels: logits, target ...xHxW -> ...."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-2).mean(-1)


PIXEL_LOSSES = {"focal": focal_loss, "bce": bce_loss}


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss: logits, target ...xHxW -> ...; eps keeps an empty target and prediction finite."""
    prob = logits.sigmoid().flatten(-2)
    target = target.flatten(-2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + eps) / (prob.sum(-1) + target.sum(-1) + eps)


def mask_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    pixel_loss: str = "focal",
) -> torch.Tensor:
    """SAM's mask loss, 20 * focal + 1 * dice by default, per mask: ...xHxW -> ....

    pixel_loss "bce" puts binary cross-entropy where focal loss stands (still weighted by focal_weight)."""
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel_loss {pixel_loss!r}; choose one of {sorted(PIXEL_LOSSES)}")
    pixel = PIXEL_LOSSES[pixel_loss](logits, target)
    return focal_weight * pixel + dice_weight * dice_loss(logits, target)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised prediction (logits > 0) with the target, per mask: ...xHxW -> ...; 1 when both
    are empty."""
    pred = (logits > 0).flatten(-2)
    target = target.flatten(-2) > 0.5
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _overlaps_under_click(logits: torch.Tensor, instances: torch.Tensor, clicks: torch.Tensor):
    """How each output overlaps the known masks, and which of them lie under its click (M >= 1).

    logits: NxKxHxW, instances: MxHxW float 0/1, clicks: Nx2 (x, y) pixels. Returns (intersection NxKxM in pixels,
    the output's area NxKx1, IoU NxKxM, under Nx1xM bool)."""
    known = (instances.flatten(-2) > 0.5).float()  # M x HW
    pred = (logits.detach() > 0).flatten(-2).float()  # N x K x HW
    inter = pred @ known.T  # N x K x M
    area = pred.sum(-1, keepdim=True)
    iou = inter / (area + known.sum(-1) - inter).clamp(min=1)
    x = clicks[:, 0].long().clamp(0, instances.shape[-1] - 1)
    y = clicks[:, 1].long().clamp(0, instances.shape[-2] - 1)
    under = (instances[:, y, x] > 0.5).T[:, None, :]  # N x 1 x M
    return inter, area, iou, under


def known_mask_iou(logits: torch.Tensor, instances: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
    """The best IoU of each output with any known mask under its click: what an automatic stage scores a
    candidate by (right when it matches some object), where a single click is ambiguous between a subpart, a
    part and the whole.

    logits: NxKxHxW (K outputs per click). instances: MxHxW float 0/1, every known mask of the image. clicks:
    Nx2 (x, y) pixels. Returns NxK; 0 for a click under no known mask (a background prompt).
    """
    n, k = logits.shape[:2]
    if instances.shape[0] == 0:
        return logits.new_zeros((n, k))
    _, _, iou, under = _overlaps_under_click(logits, instances, clicks)
    return torch.where(under, iou, torch.zeros_like(iou)).amax(dim=-1)


def inside_unlabelled(
    logits: torch.Tensor,
    instances: torch.Tensor,
    clicks: torch.Tensor,
    match_iou: float = 0.5,
    inside: float = 0.9,
) -> torch.Tensor:
    """Which outputs may be objects nobody labelled: NxK bool, True where an output matches no known mask under
    its click at ``match_iou`` yet lies inside one of them (at least ``inside`` of its pixels): a nucleus
    answered for a click in a labelled cell whose nucleus was never labelled. Its true IoU is unknown, so an IoU
    head trained on partial labels should not learn it as a failure. Shapes as ``known_mask_iou``.
    """
    n, k = logits.shape[:2]
    if instances.shape[0] == 0:
        return torch.zeros((n, k), dtype=torch.bool, device=logits.device)
    inter, area, iou, under = _overlaps_under_click(logits, instances, clicks)
    matched = (under & (iou >= match_iou)).any(-1)
    within = (under & (inter >= inside * area) & (area > 0)).any(-1)
    return within & ~matched


def min_over_masks(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For NxM per-output losses, the lowest loss of each row and its index: (N,), (N,) long.

    Only the chosen output then carries gradient, as in the paper's training of ambiguous prompts.
    """
    if losses.ndim != 2:
        raise ValueError(f"losses must be NxM, got shape {tuple(losses.shape)}")
    best, index = losses.min(dim=1)
    return best, index


def iou_head_loss(iou_pred: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the IoU head's predictions (NxM) and the actual IoU of each of the M outputs (NxMxHxW
    logits against an Nx1xHxW or NxMxHxW target), per mask and output: NxM. An empty target (a prompt on
    background) has no object to find: its actual IoU is 0 whatever the output, an empty one included."""
    target = target.expand_as(logits)
    actual = mask_iou(logits.detach(), target)
    actual = torch.where(target.flatten(-2).amax(-1) > 0.5, actual, torch.zeros_like(actual))
    return (iou_pred - actual) ** 2
