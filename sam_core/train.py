"""SAM's interactive trainer (Kirillov et al. 2023, appendix A), read top to bottom.

Per image: encode once; per mask: a first prompt (a positive point or a noisy box, equal odds), then 10 more
decoder passes, each fed the previous pass's logits as the mask prompt: 8 of them add a correction click drawn
from the error region, 2 add none (one at a random place among them, one at the end) = 11 passes. Loss per pass:
20 * focal + 1 * dice on the masks (for an ambiguous single-point prompt only the lowest-loss of the 3 outputs),
plus MSE on the IoU head. The mask fed to the next pass, and whose errors the next click corrects, is the one
the IoU head ranks first (what a user is shown), so training practises correcting a wrong-level first mask.
AdamW with linear warmup and cosine decay; optionally an exponential moving average of the weights (`ema_decay`),
which is what checkpoints then hold. `Trainer.state()` / `Trainer.restore()` carry everything a run needs to go
on where it stopped (weights, optimizer, EMA, step, random generators).

    python -m sam_core.train --steps 100 --out /tmp/sam_tiny.pt
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import multiprocessing
import operator
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.build import build_sam
from sam_core.checkpoint import atomic_save, encoder_digest, load_weights
from sam_core.losses import (
    inside_unlabelled,
    iou_head_loss,
    known_mask_iou,
    mask_iou,
    mask_loss,
    min_over_masks,
)
from sam_core.prompts import noisy_box, sample_error_points, sample_points_in
from sam_core.train_data import SyntheticDataset, prepare_sample

log = logging.getLogger(__name__)

# Gain of locality_init for every fresh decoder the engine trains (TrainConfig's default, the demo's seed).
ATTENTION_INIT_GAIN = 2.0


BOUNDS = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}
"""The bounds a training knob may carry in its field metadata, by pydantic's names: the test and its words."""

PixelLoss = Literal["focal", "bce"]
IouTarget = Literal["prompted", "any_known", "any_known_partial"]


def knob(default, doc: str, **bounds):
    """A TrainConfig field that says what it is: its default, one line for a form's help (``doc``) and its
    bounds (ge, gt, le, lt). ``TrainConfig.validate`` checks the bounds, and the flows' pydantic form
    (flows.params.TrainSettings) derives its fields from these, so a knob is said here and nowhere else."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}; a knob takes {tuple(BOUNDS)}")
    return field(default=default, metadata={"doc": doc, **bounds})


@dataclass
class TrainConfig:
    """Everything one training run depends on; the defaults run (a short synthetic run of the tiny model).

    The one training recipe: the trainer reads it, a retrain task takes it, the flows' form derives from it."""

    model: str = "tiny"  # a sam_core.build.CONFIGS name
    steps: int = knob(200, "optimisation steps", ge=1, le=1_000_000)
    images_per_step: int = knob(1, "images per optimisation step", ge=1)
    masks_per_image: int = knob(
        16, "instances sampled per image; they share one image-encoder pass", ge=1, le=256
    )
    lr: float = knob(8e-4, "peak learning rate (AdamW)", gt=0.0, lt=1.0)
    warmup_steps: int = 250  # capped at a fifth of `steps` so short runs still reach full lr
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    # The cosine decay spans this last fraction of the steps after warmup; before it the lr stays at its peak
    # (warmup-stable-decay), so a long run can be resumed and extended before it starts to anneal.
    decay_fraction: float = knob(
        1.0, "the last fraction of the steps that the cosine decay spans", gt=0.0, le=1.0
    )
    # Exponential moving average of the weights (0 = off); checkpoints then hold the average, which behaves like
    # an annealed model at any step of a long run.
    ema_decay: float = knob(0.0, "exponential moving average of the weights (0: off)", ge=0.0, lt=1.0)
    weight_decay: float = knob(0.1, "AdamW weight decay (norms, biases and tokens have none)", ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = (
        None  # max gradient norm; None = no clipping (1.0 stalled from-scratch training)
    )
    correction_points: int = knob(8, "clicks from the error region per mask (paper: 8)", ge=0, le=20)
    no_point_iterations: int = knob(
        2, "mask-only passes per mask, one random, one at the end (paper: 2)", ge=0, le=5
    )
    box_probability: float = knob(
        0.5, "odds that a mask's first prompt is a noisy box rather than a click", ge=0.0, le=1.0
    )
    # Point prompts per image on background: pixels at least BACKGROUND_MARGIN px from every known mask, whose
    # answer is "no object" (an empty target, IoU target 0). The automatic grid puts most of its points on
    # background in sparse scenes (cells: 55-85%), and a head that only ever saw clicks on objects rates those
    # masks like any other. 0 = off (the paper's recipe). Only where the first prompt is a point.
    background_points: int = knob(
        0,
        "clicks per image on background (3 px or more from every known mask), taught to find no mask: they "
        "lower the IoU head's rating of the automatic grid's background points (0: the paper's recipe)",
        ge=0,
        le=64,
    )
    iou_loss_weight: float = knob(
        1.0, "weight of the IoU head's loss beside the mask loss (paper: 1)", ge=0.0
    )
    # A single click is ambiguous (a nucleolus, its nucleus, the cell): "prompted" scores each of its three
    # outputs by its IoU with the mask the click was drawn from, the paper's rule, so a perfect cell mask counts as
    # a miss whenever the nucleus was drawn and the head learns to rate every output alike; the automatic stage,
    # which keeps a candidate when it matches any object, then cannot rank its candidates.
    iou_target: IouTarget = knob(
        "prompted",
        "what the IoU head learns for a single click's outputs: its IoU with the prompted mask (the paper's), or "
        "the best IoU with any known mask under the click (any_known: ranks automatic masks better), or that "
        "but untrained for an output inside a known mask that matches none (any_known_partial: for images "
        "whose labels are partial, where such an output may be a part nobody labelled)",
    )
    # Weight of the auxiliary loss that shapes the image embedding to group each instance's cells
    # (grouping_loss); 0 = off. Only while the encoder trains.
    grouping_loss_weight: float = 0.0
    # The paper's 20:1. From scratch, 20:1 makes "predict nothing" a deep plateau (any imprecise positive costs
    # more focal loss than it saves dice), so a warm-up phase may lower the focal weight; see MODEL_CARD.md.
    focal_weight: float = knob(
        20.0, "weight of the pixel loss (focal, or BCE); the paper's 20:1 with dice", ge=0.0
    )
    dice_weight: float = knob(1.0, "weight of the dice loss", ge=0.0)
    pixel_loss: PixelLoss = knob(
        "focal", "pixel term of the mask loss: the paper's focal, or BCE (what the embedded model used)"
    )
    freeze_image_encoder: bool = knob(False, "train only the prompt encoder and mask decoder")
    # From scratch at full lr the encoder collapses to spatially flat features (the quickest way to predict
    # "nothing"); a smaller encoder lr, after a decoder-only warm-up, avoids it.
    encoder_lr_scale: float = knob(
        1.0, "the image encoder's lr as a multiple of lr (when it trains)", ge=0.0, le=10.0
    )
    # While the encoder trains, keep its BatchNorm running statistics as loaded (eval mode; the affine weights
    # still learn). A fine-tune sees one image a step, whose batch statistics are far noisier than the ones the
    # encoder was trained with.
    freeze_norm_stats: bool = knob(
        False,
        "keep the image encoder's BatchNorm statistics as loaded while it trains (a fine-tune on one image a step)",
    )
    cache_embeddings: bool = knob(
        False,
        "freeze the encoder and encode each image once (fast on CPU; decoder-only training)",
    )
    data_split: str = "train"
    # Use only the split's first N scenes (None = all): with cache_embeddings each is then encoded once and its
    # embedding reused, which on a CPU costs less than encoding a new scene every step.
    dataset_size: int | None = knob(None, "use only the split's first N scenes (None: all)", ge=1)
    # Each mask enters the decoder batch this many times with independently sampled prompts: more prompts per
    # encoded image, in the same single batched decoder pass.
    prompts_per_mask: int = knob(1, "each mask enters the decoder batch this many times", ge=1)
    seed: int = knob(0, "seed of the sampled images, masks and prompts", ge=0)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10
    init_checkpoint: str | None = None  # start from these weights (path or fsspec URL)
    # Replace the prompt encoder and mask decoder by freshly initialised ones (keeping the image encoder), with
    # the location-aware attention init below. A decoder that learnt to ignore the prompt does not unlearn it.
    fresh_decoder: bool = False
    # Gain of the location-aware init of a fresh decoder's cross-attention (see locality_init); 0 = PyTorch's
    # default init, with which the decoder learns to ignore where the prompt is (MODEL_CARD.md).
    attention_init_gain: float = ATTENTION_INIT_GAIN
    metadata: dict = field(
        default_factory=dict
    )  # lineage (parent version, data round, ...) copied to the checkpoint

    def validate(self) -> None:
        """ValueError naming the first knob outside its bounds, or a pixel loss the trainer does not know."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for bound, (holds, words) in BOUNDS.items():
                if bound in f.metadata and value is not None and not holds(value, f.metadata[bound]):
                    raise ValueError(f"{f.name} must be {words} {f.metadata[bound]}, got {value!r}")
        if self.pixel_loss not in typing.get_args(PixelLoss):
            raise ValueError(f"pixel_loss must be 'focal' or 'bce', got {self.pixel_loss!r}")
        if self.iou_target not in typing.get_args(IouTarget):
            raise ValueError(
                f"iou_target must be one of {typing.get_args(IouTarget)}, got {self.iou_target!r}"
            )


def iteration_schedule(config: TrainConfig, rng: np.random.Generator) -> list[str]:
    """The kinds of the decoder passes for one mask: "first", then "point" or "none".

    With the defaults: 1 first + 8 points + 2 none = 11, one "none" at a random place among the points and one
    always last (the paper's schedule).
    """
    middle = ["point"] * config.correction_points
    if config.no_point_iterations > 0:
        for _ in range(config.no_point_iterations - 1):
            middle.insert(int(rng.integers(0, len(middle) + 1)), "none")
        middle.append("none")
    return ["first", *middle]


def build_model(name: str = "tiny", attention_init_gain: float = 0.0) -> torch.nn.Module:
    """A freshly initialised model of the named config (see sam_core.build_sam); a gain > 0 applies
    ``locality_init`` to its mask decoder."""
    model = build_sam(name)
    if attention_init_gain > 0:
        locality_init(model.mask_decoder, attention_init_gain)
    return model


@torch.no_grad()
def locality_init(mask_decoder: torch.nn.Module, gain: float = 2.0) -> None:
    """Initialise every cross-attention between prompt tokens and image tokens with tied projections: q_proj
    and k_proj share one random orthogonal matrix scaled by ``gain`` (biases zero).

    Why: a prompt token carries the positional encoding of its point and an image token that of its cell, so
    with q = k the attention score holds PE(point) . PE(cell), largest at the point's own cell: from the first
    step each prompt attends near where it is. With independent random projections the attention over the
    h*w cells starts uniform, its gradient towards any one cell is about 1/(h*w), and on a small budget the
    decoder settles for a prompt-independent "objectness" mask instead (measured on a toy task, a disk around
    a click on a blank image: IoU 0.00 after 150 steps of 16 clicks with the default init, 0.82 after 100 with
    this one at gain 2). Only the init changes: the architecture and state-dict names are SAM's.
    """
    transformer = mask_decoder.transformer
    attentions = [layer.cross_attn_token_to_image for layer in transformer.layers]
    attentions += [layer.cross_attn_image_to_token for layer in transformer.layers]
    attentions.append(transformer.final_attn_token_to_image)
    for attention in attentions:
        weight = torch.empty_like(attention.q_proj.weight)
        torch.nn.init.orthogonal_(weight)
        for projection in (attention.q_proj, attention.k_proj):
            projection.weight.copy_(weight * gain)
            projection.bias.zero_()


class Sample(NamedTuple):
    """One training image: its index in the dataset, pixels 3xSxS, the prompted masks NxSxS with their noisy
    boxes Nx4, every instance mask of the image MxSxS (for the grouping loss; None when it is off) and its
    background SxS bool (where background prompts go; None when they are off)."""

    index: int
    image: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    instances: torch.Tensor | None
    background: torch.Tensor | None = None


BACKGROUND_MARGIN = 3
"""Pixels (at the encoder's input size) between a background prompt and the nearest known mask: a click on an
object's edge is ambiguous, one this far out is not."""


def background_region(instances: torch.Tensor, margin: int = BACKGROUND_MARGIN) -> torch.Tensor:
    """SxS bool: the pixels at least ``margin`` px from every one of ``instances`` (MxSxS float 0/1)."""
    covered = (instances > 0.5).any(dim=0).float()[None, None]
    grown = F.max_pool2d(covered, 2 * margin + 1, stride=1, padding=margin)
    return grown[0, 0] == 0


def grouping_loss(embedding: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """Teach the image embedding which cells belong together: the cosine similarity of every pair of embedding
    cells regresses onto the overlap of the instances the two cells lie in.

    embedding: 1xCxhxw; instances: MxSxS float 0/1, every instance mask of the image (nested levels included).
    Each cell's membership is the fraction of it each instance covers, plus one "background" entry; the target
    of a pair is the soft Jaccard index of their memberships (1 inside the same subpart, 2/3 for a subpart and
    its part, 1/3 for a subpart and its whole, 0 across objects or against the background).

    Why: the mask decoder reads a mask as the similarity of each cell's features to what the click's tokens
    gathered, so it needs features that group the pixels of an instance. Learnt only through the decoder, a
    from-scratch encoder on a CPU budget gives blobs of a fixed size around the click; this loss shapes the
    features directly and costs one h*w x h*w matrix product a step (no decoder pass).
    """
    _, c, h, w = embedding.shape
    membership = F.adaptive_avg_pool2d(instances[None].float(), (h, w))[0].flatten(1).T  # hw x M
    background = (1 - membership.max(dim=1, keepdim=True).values).clamp(min=0)
    membership = torch.cat([membership, background], dim=1)
    inter = membership @ membership.T
    size = membership.sum(dim=1)
    target = inter / (size[:, None] + size[None, :] - inter).clamp(min=1e-6)
    cells = F.normalize(embedding[0].reshape(c, h * w).T, dim=1)
    return ((cells @ cells.T - target) ** 2).mean()


class FrozenEmbeddings:
    """Image embeddings of frozen encoders, shared by every training run in this process.

    A run with ``cache_embeddings`` encodes each image once; a data engine's retrains, each starting from the
    last with the same frozen encoder, would otherwise encode the same images again every round (most of a short
    CPU retrain's time). Keys are (a digest of the encoder's weights and its device, a digest of the encoder-sized
    image), so another encoder or a changed image never meets a stale embedding. Least recently used entries go
    first once ``max_bytes`` is reached.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        import threading
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, encoder_key: str, image: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The embedding of ``image`` (3xSxS, encoder size) under ``encoder_key``: cached, or ``compute()``."""
        import hashlib

        pixels = image.detach().cpu().contiguous().numpy()
        key = (encoder_key, pixels.shape, hashlib.blake2b(pixels.tobytes(), digest_size=16).digest())
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        embedding = compute()
        with self._lock:
            self.misses += 1
            if key not in self._entries:
                self._entries[key] = embedding
                self._bytes += embedding.element_size() * embedding.nelement()
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.element_size() * old.nelement()
        return embedding

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


FROZEN_EMBEDDINGS = FrozenEmbeddings()

_READER_DATASET: Sequence | None = None  # a data worker's dataset (Trainer's data_workers)
READ_TIMEOUT = 60.0  # seconds Trainer.close waits for the scenes its data workers are reading


def _start_reader(dataset: Sequence) -> None:
    global _READER_DATASET
    # Each worker is one of several processes: a thread pool each would oversubscribe the cores.
    torch.set_num_threads(1)
    _READER_DATASET = dataset


def _read_item(index: int):
    return _READER_DATASET[index]


def encode(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalise Bx3xSxS float pixel values (0..255, S = encoder size) and encode: -> BxCxhxw."""
    x = (images - model.pixel_mean) / model.pixel_std
    return model.image_encoder(x)


def interactive_loss(
    model: torch.nn.Module,
    embedding: torch.Tensor,
    gt: torch.Tensor,
    use_box: bool,
    boxes: torch.Tensor | None,
    config: TrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    first_region: torch.Tensor | None = None,
    instances: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The 11-pass interactive loss for N masks of one image.

    embedding: 1xCxhxw. gt: NxSxS float 0/1 at the encoder's input size; an empty row is a background prompt
    (its answer is no mask, its IoU target 0). boxes: Nx4 noisy boxes (used when use_box). first_region: NxSxS
    bool, where each first click is drawn (default: inside gt). instances: MxSxS float 0/1, every known mask of
    the image: a single click's IoU targets when config.iou_target is "any_known" or "any_known_partial".
    Returns the loss averaged over passes and stats (IoU after the first and the last pass).
    """
    n, size = gt.shape[0], gt.shape[-1]
    gt_bool = gt > 0.5
    target = gt[:, None]
    image_pe = model.prompt_encoder.get_dense_pe()
    coords = torch.zeros((n, 0, 2), device=gt.device)
    labels = torch.zeros((n, 0), dtype=torch.long, device=gt.device)
    mask_input = None
    pred = None
    schedule = iteration_schedule(config, rng)
    total = embedding.new_zeros(())
    ious = []
    rows = torch.arange(n)
    for kind in schedule:
        if kind == "first" and not use_box:
            coords = sample_points_in(gt_bool if first_region is None else first_region, generator)[:, None]
            labels = torch.ones((n, 1), dtype=torch.long, device=gt.device)
        elif kind == "point":
            new_coords, new_labels = sample_error_points(gt_bool, pred, generator)
            coords = torch.cat([coords, new_coords[:, None]], dim=1)
            labels = torch.cat([labels, new_labels[:, None]], dim=1)
        points = (coords, labels) if coords.shape[1] > 0 else None
        sparse, dense = model.prompt_encoder(
            points=points, boxes=boxes if use_box else None, masks=mask_input
        )
        multimask = kind == "first" and not use_box  # one point is ambiguous; a box or several points are not
        low_res, iou_pred = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        per_output = mask_loss(
            logits, target.expand_as(logits), config.focal_weight, config.dice_weight, config.pixel_loss
        )
        best, _ = min_over_masks(per_output)
        if multimask and instances is not None and config.iou_target == "any_known":
            iou_loss = ((iou_pred - known_mask_iou(logits, instances, coords[:, 0])) ** 2).mean(dim=1)
        elif multimask and instances is not None and config.iou_target == "any_known_partial":
            squared = (iou_pred - known_mask_iou(logits, instances, coords[:, 0])) ** 2
            judged = ~inside_unlabelled(logits, instances, coords[:, 0])
            iou_loss = (squared * judged).sum(dim=1) / judged.sum(dim=1).clamp(min=1)
        else:
            iou_loss = iou_head_loss(iou_pred, logits, target).mean(dim=1)
        total = total + best.mean() + config.iou_loss_weight * iou_loss.mean()
        # The next pass sees the mask the IoU head ranks first (what a user is shown), as raw logits; no
        # gradient flows back through them. Its errors are where the next click goes.
        shown = iou_pred.detach().argmax(dim=1)
        chosen = logits[rows, shown].detach()
        mask_input = low_res[rows, shown][:, None].detach()
        pred = chosen > 0
        ious.append(mask_iou(chosen, gt).mean().item())
    loss = total / len(schedule)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} (passes: {schedule})")
    return loss, {"iou_first": ious[0], "iou_last": ious[-1]}


def lr_at(step: int, config: TrainConfig, optimizer_start: int = 0) -> float:
    """Linear warmup, the peak lr held until the last ``decay_fraction`` of the remaining steps, then cosine
    decay to lr * min_lr_ratio at the last step.

    ``optimizer_start`` is the step at which the optimizer began (0, or the step of weights a run went on from
    with a fresh optimizer): the warmup counts from there, scaling the schedule's lr, because a fresh AdamW at
    the full lr takes steps of about lr in every weight and undoes an annealed model's gains."""
    warmup = min(config.warmup_steps, max(1, config.steps // 5))
    decay_steps = max(1, round((config.steps - warmup) * config.decay_fraction))
    progress = max(0.0, (step - (config.steps - decay_steps)) / decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    scheduled = config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)
    since_start = step - optimizer_start
    if 0 <= since_start < warmup:
        # From step 0 the decay never starts inside the warmup, so this is the plain linear warmup to lr.
        return scheduled * (since_start + 1) / warmup
    return scheduled


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norms, biases, positional embeddings are not decayed); the
    image encoder's groups run at lr * encoder_lr_scale (each group's "lr_scale" is applied by the schedule)."""
    # Learned tokens (nn.Embedding: the IoU and mask tokens, point-type and no-mask embeddings) are vectors to
    # be placed, not weights to be shrunk: like norms and biases they are not decayed.
    token_params = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding)
        for p in module.parameters()
    }
    groups = []
    for scale, prefix_match in ((config.encoder_lr_scale, True), (1.0, False)):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad or name.startswith("image_encoder.") != prefix_match:
                continue
            decayed = p.ndim >= 2 and "pos_embed" not in name and id(p) not in token_params
            (decay if decayed else no_decay).append(p)
        groups += [
            {"params": decay, "weight_decay": config.weight_decay, "lr_scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


class Trainer:
    """Holds the model, optimizer and counters of one run; ``step()`` does one optimisation step.

    dataset: a sequence of (image HxWx3 uint8, masks list of HxW bool). Bad masks (empty, wrong shape) are
    skipped and counted in ``skipped``; an image with no usable mask is skipped and counted too.
    after_backward: called with the model after each backward pass (Ray uses it to average gradients).
    device: where the model trains ("cpu", "cuda"); samples are prepared on the CPU and moved there.
    data_workers: processes that read ``dataset[index]`` ahead of the step that needs it (0: read in the step).
    A GPU step of eight synthetic scenes takes less time than drawing them on one core (35 ms a scene here), so
    a GPU run draws them in parallel. The indexes still come from the run's generator, in order, a few steps
    ahead, so a run with workers is as repeatable as one without, but draws other samples than it (and a resumed
    run skips the few it had drawn ahead). Call ``close()`` when done.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Sequence | None = None,
        model: torch.nn.Module | None = None,
        after_backward: Callable[[torch.nn.Module], None] | None = None,
        device: str | torch.device = "cpu",
        data_workers: int = 0,
    ):
        config.validate()
        self.config = config
        self.dataset = (
            dataset if dataset is not None else SyntheticDataset(config.data_split, count=config.dataset_size)
        )
        if len(self.dataset) == 0:
            raise ValueError("dataset is empty: nothing to train on")
        if data_workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {data_workers}")
        self._pool = None
        self._ahead: collections.deque = collections.deque()  # (index, AsyncResult) in the order drawn
        if data_workers > 0:
            # Started before the model reaches the GPU, and by spawn: a forked child of a process that has
            # started CUDA or OpenMP threads can hang.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(data_workers, initializer=_start_reader, initargs=(self.dataset,))
        self.model = model if model is not None else build_model(config.model, config.attention_init_gain)
        if config.init_checkpoint:
            load_weights(self.model, config.init_checkpoint)
        if config.fresh_decoder:
            fresh = build_model(config.model, config.attention_init_gain)
            self.model.prompt_encoder.load_state_dict(fresh.prompt_encoder.state_dict())
            self.model.mask_decoder.load_state_dict(fresh.mask_decoder.state_dict())
        if self.encoder_frozen:
            self.model.image_encoder.requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, config)
        # The moving average of every float tensor of the state dict (BatchNorm statistics included).
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema_decay > 0:
            self.ema = {
                k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()
            }
        self.after_backward = after_backward
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step_index = 0
        self.optimizer_start = 0  # the step the optimizer's state began at (see lr_at)
        self.skipped = {"empty_masks": 0, "shape_mismatch": 0, "images_without_masks": 0}
        self.embedding_cache: dict[int, torch.Tensor] = {}
        self.encoder_key: str | None = None
        self.history: list[dict] = []
        self.started = time.monotonic()
        self.seconds_before = 0.0  # wall time of earlier sessions of a resumed run

    @property
    def img_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def encoder_frozen(self) -> bool:
        return self.config.freeze_image_encoder or self.config.cache_embeddings

    def _read(self) -> tuple[int, np.ndarray, list]:
        """The next (index, image, masks): drawn now, or drawn earlier and read ahead by the workers."""
        if self._pool is None:
            index = int(self.rng.integers(0, len(self.dataset)))
            return (index, *self.dataset[index])
        ahead = 4 * self.config.images_per_step
        while len(self._ahead) < ahead:
            index = int(self.rng.integers(0, len(self.dataset)))
            self._ahead.append((index, self._pool.apply_async(_read_item, (index,))))
        index, result = self._ahead.popleft()
        return (index, *result.get())

    def close(self) -> None:
        """Stop the data workers (if any); the trainer reads in the step from then on."""
        if self._pool is None:
            return
        # Let the reads in flight finish, then let the workers exit. Pool.terminate() kills a worker even while
        # it sends its scene back holding the result queue's lock, and the pool's task thread then waits on that
        # lock for ever (a CI run of the suite hung there, in the data-workers test; alone, that test hung once in
        # 16 runs). terminate() is left for workers that do not answer within READ_TIMEOUT.
        deadline = time.monotonic() + READ_TIMEOUT
        for _, result in self._ahead:
            result.wait(max(0.0, deadline - time.monotonic()))
        if all(result.ready() for _, result in self._ahead):
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()
        self._pool = None
        self._ahead.clear()

    def _next_sample(self) -> Sample:
        grouping = self.config.grouping_loss_weight > 0
        for _ in range(100):
            index, image, masks = self._read()
            # The grouping loss and the background need every instance of the image; the prompts still go to
            # masks_per_image of them.
            every = (
                grouping
                or self.config.background_points > 0
                or self.config.iou_target.startswith("any_known")
            )
            limit = len(masks) if every else self.config.masks_per_image
            sample = prepare_sample(image, masks, self.img_size, limit, self.rng)
            for key, count in sample.skipped.items():
                self.skipped[key] += count
            if sample.masks.shape[0] > 0:
                instances = sample.masks if every else None
                background = background_region(sample.masks) if self.config.background_points > 0 else None
                chosen, boxes = sample.masks, sample.boxes
                if chosen.shape[0] > self.config.masks_per_image:
                    keep = torch.from_numpy(
                        np.sort(self.rng.choice(chosen.shape[0], self.config.masks_per_image, replace=False))
                    )
                    chosen, boxes = chosen[keep], boxes[keep]
                repeat = self.config.prompts_per_mask
                if repeat > 1:  # fresh box noise for the repeats; points are drawn per row anyway
                    gt_bool = chosen.numpy() > 0.5
                    extra = [noisy_box(m, self.rng) for _ in range(repeat - 1) for m in gt_bool]
                    boxes = torch.cat([boxes, torch.from_numpy(np.stack(extra))])
                return Sample(
                    index,
                    sample.image.to(self.device),
                    chosen.repeat(repeat, 1, 1).to(self.device),
                    boxes.to(self.device),
                    None if instances is None else instances.to(self.device),
                    None if background is None else background.to(self.device),
                )
            self.skipped["images_without_masks"] += 1
        raise ValueError(f"100 images in a row had no usable mask (skipped so far: {self.skipped})")

    def _embedding(self, index: int, image: torch.Tensor) -> torch.Tensor:
        if not self.config.cache_embeddings:
            return encode(self.model, image[None])
        if index not in self.embedding_cache:
            if self.encoder_key is None:  # weights are frozen from here on: digest them once
                device = next(self.model.image_encoder.parameters()).device
                self.encoder_key = (
                    f"{encoder_digest(self.model.image_encoder.state_dict(prefix='image_encoder.'))}@{device}"
                )

            def compute() -> torch.Tensor:
                with torch.no_grad():
                    return encode(self.model, image[None])

            self.embedding_cache[index] = FROZEN_EMBEDDINGS.get(self.encoder_key, image, compute)
        return self.embedding_cache[index]

    def step(self) -> dict:
        """One optimisation step over ``images_per_step`` images; returns the logged stats."""
        self.model.train()
        if self.encoder_frozen:  # a frozen encoder keeps its BatchNorm statistics (if it has any)
            self.model.image_encoder.eval()
        elif self.config.freeze_norm_stats:
            for module in self.model.image_encoder.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        lr = lr_at(self.step_index, self.config, self.optimizer_start)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": 0.0, "iou_first": 0.0, "iou_last": 0.0, "masks": 0}
        samples = [self._next_sample() for _ in range(self.config.images_per_step)]
        if self.config.cache_embeddings:
            embeddings = [self._embedding(sample.index, sample.image) for sample in samples]
        else:  # one batched encoder pass: cheaper, and BatchNorm sees every image of the step
            embeddings = list(encode(self.model, torch.stack([sample.image for sample in samples])).split(1))
        per_image = self.config.images_per_step
        total = None
        if self.config.grouping_loss_weight > 0 and not self.encoder_frozen:
            stats["grouping"] = 0.0
        for sample, embedding in zip(samples, embeddings, strict=True):
            gt, boxes = sample.masks, sample.boxes
            use_box = bool(self.rng.random() < self.config.box_probability)
            first_region = None
            if not use_box and sample.background is not None and sample.background.any():
                k = self.config.background_points
                first_region = torch.cat([gt > 0.5, sample.background.expand(k, -1, -1)])
                gt = torch.cat([gt, gt.new_zeros((k, *gt.shape[1:]))])
            loss, s = interactive_loss(
                self.model,
                embedding,
                gt,
                use_box,
                boxes,
                self.config,
                self.rng,
                self.generator,
                first_region,
                sample.instances,
            )
            if "grouping" in stats:
                grouping = grouping_loss(embedding, sample.instances)
                stats["grouping"] += grouping.item() / per_image
                loss = loss + self.config.grouping_loss_weight * grouping
            total = loss / per_image if total is None else total + loss / per_image
            stats["loss"] += loss.item() / per_image
            stats["iou_first"] += s["iou_first"] / per_image
            stats["iou_last"] += s["iou_last"] / per_image
            stats["masks"] += gt.shape[0]
        total.backward()
        if self.after_backward is not None:
            self.after_backward(self.model)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip or float("inf"))
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at step {self.step_index}")
        self.optimizer.step()
        self.step_index += 1
        self._update_ema()
        stats.update(step=self.step_index, lr=lr, seconds=self.elapsed_seconds())
        self.history.append(stats)
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Early on the average follows the weights closely (decay (1 + t) / (10 + t)), so it is never
        # dominated by the random initialisation.
        decay = min(self.config.ema_decay, (1 + self.step_index) / (10 + self.step_index))
        for name, value in self.model.state_dict().items():
            if name in self.ema:
                self.ema[name].lerp_(value.detach(), 1 - decay)

    def elapsed_seconds(self) -> float:
        """Training wall time of this run, across resumes."""
        return self.seconds_before + time.monotonic() - self.started

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict a checkpoint holds: the moving average where ema_decay > 0, else the weights."""
        state = self.model.state_dict()
        if self.ema is not None:
            state = {k: self.ema.get(k, v) for k, v in state.items()}
        return state

    def checkpoint(self, metrics: dict | None = None, half: bool = False) -> dict:
        """{"model": state_dict, "config": dict, "sam_config": dict, "metadata": dict}; ``half`` stores floats
        as fp16. The model config (sam_config) names the image encoder, so a loader can refuse another kind."""
        state = {
            k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in self.weights().items()
        }
        metadata = {
            **self.config.metadata,
            "steps": self.step_index,
            "wall_seconds": round(self.elapsed_seconds(), 1),
            "skipped": dict(self.skipped),
            "metrics": metrics or {},
            "torch": str(torch.__version__),
        }
        sam_config = getattr(self.model, "config", None)
        return {
            "model": state,
            "config": dataclasses.asdict(self.config),
            "sam_config": sam_config.to_dict() if sam_config is not None else None,
            "metadata": metadata,
        }

    def state(self) -> dict:
        """Everything needed to go on from this step: weights, optimizer, moving average, step, generators,
        history. torch.load(weights_only=True) reads it back (only tensors and plain containers)."""
        rng_state = self.rng.bit_generator.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "step": self.step_index,
            "optimizer_start": self.optimizer_start,
            "seconds": self.elapsed_seconds(),
            "rng": json.dumps(rng_state),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "skipped": dict(self.skipped),
            "history": list(self.history),
            "config": dataclasses.asdict(self.config),
        }

    def restore(self, state: dict) -> None:
        """Go on from ``state()`` of an earlier run of the same recipe (steps may have been extended)."""
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("ema") is not None and self.ema is not None:
            self.ema = {k: v.to(self.device).clone() for k, v in state["ema"].items()}
        self.step_index = int(state["step"])
        self.optimizer_start = int(state.get("optimizer_start", 0))
        self.seconds_before = float(state["seconds"])
        self.started = time.monotonic()
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.skipped = dict(state["skipped"])
        self.history = list(state["history"])

    def save(self, path: str | Path, metrics: dict | None = None, half: bool = False) -> None:
        """Write the checkpoint atomically (temporary name, then rename) so a reader never sees half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(self.checkpoint(metrics, half=half), path)


def train(
    config: TrainConfig,
    dataset: Sequence | None = None,
    out: str | Path | None = None,
    model: torch.nn.Module | None = None,
    after_backward: Callable[[torch.nn.Module], None] | None = None,
    stop_after: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Trainer:
    """Run ``config.steps`` steps (or stop after ``stop_after``, the lr schedule still spanning config.steps);
    save to ``out`` every ``checkpoint_every`` steps and at the end. ``on_progress(steps done, steps)`` is
    called after each step, steps being those this call runs (the fewer of config.steps and ``stop_after``)."""
    trainer = Trainer(config, dataset, model, after_backward)
    steps = min(config.steps, stop_after or config.steps)
    for _ in range(steps):
        stats = trainer.step()
        if on_progress is not None:
            on_progress(trainer.step_index, steps)
        if config.log_every and (trainer.step_index % config.log_every == 0 or trainer.step_index == 1):
            log.info(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()}))
        if out and config.checkpoint_every and trainer.step_index % config.checkpoint_every == 0:
            trainer.save(out)
    if out:
        trainer.save(out)
    return trainer


_ARGUMENT_TYPES = {int: int, float: float, str: str, int | None: int, str | None: str}
"""The TrainConfig field types ``python -m sam_core.train`` takes from its command line, and how it parses them."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag, kind, doc = f"--{f.name.replace('_', '-')}", hints[f.name], f.metadata.get("doc")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=doc)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), default=f.default, help=doc)
        elif kind in _ARGUMENT_TYPES:
            parser.add_argument(flag, type=_ARGUMENT_TYPES[kind], default=f.default, help=doc)
    parser.add_argument("--out", default=None, help="checkpoint path")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    train(config, out=args.out)


if __name__ == "__main__":
    main()
