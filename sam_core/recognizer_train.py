"""The mask recognizer's second stage: trained on the candidates it meets at inference, many scenes a step.

The text path's trainer (sam_core.text_train) teaches the recognizer on each scene's ground-truth masks, two
scenes a step beside the decoder. At inference it scores something else: the image's candidate masks
(sam_core.text_recognition.candidate_masks), which cut objects differently, miss some, and hold duplicates and
pieces. This stage fits the recognizer alone to those, on a fixed text model (image encoder, decoder and text
encoder unchanged, so clicks, boxes and the text tokens answer as before):

1. ``build_candidates`` computes, once per training scene, its candidate masks' descriptors and their IoU with
   every ground-truth mask (wholes, parts and subparts), and keeps them on disk in chunks, so that a killed build
   goes on from its last chunk. A scene costs about 1.3 s on 2 cores (the grid of clicks); what is kept is
   about 0.6 MB (the masks, packed, with their predicted IoU and stability, so that a new descriptor
   needs no clicks). The chunks are keyed by
   what the candidates depend on (``candidates_key``): another base model or candidate setting computes them again;
   a change of the descriptor alone (any edit of sam_core.text_recognition, whose source is part of the key)
   describes the stored masks again, about 0.3 s a scene instead of the grid's seconds (``masks_key``).
2. ``RecognizerTrainer`` trains the recognizer on them, ``scenes_per_step`` scenes a step (a step costs a few ms
   a scene: no decoder). A candidate is what a phrase names when its IoU with one of the phrase's masks is at
   least ``positive_iou``, is not when under ``negative_iou``; in between it is left out of the per-pair loss.
   The loss is the first stage's three parts on these labels: BCE per (phrase, candidate), BCE of the best score
   against presence (up through the best of the candidates it names; a present phrase with none is left out), and
   for a phrase naming one object a softmax towards the candidates that cover it best (within PICK_MARGIN).

Shapes: descriptors K x DESCRIPTOR_DIM float32, IoU K x G float16 (K candidates, G ground-truth masks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam_core import text_recognition
from sam_core.build import SamConfig
from sam_core.checkpoint import RECOGNIZER_PREFIX, atomic_save, text_keys
from sam_core.phrases import scene_phrases
from sam_core.predictor import SamPredictor
from sam_core.sam import Sam
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_encoder import TextEncoder
from sam_core.text_train import frozen_embeddings
from sam_core.train import lr_at

log = logging.getLogger(__name__)

CHUNK = 50  # scenes per file of the candidate cache
# The module constants of sam_core.text_recognition that change which masks a scene's candidates are, and those
# that change only how they are described (with the module's source: its code describes them).
MASK_SETTINGS = (
    "CANDIDATE_POINTS_PER_SIDE", "CANDIDATE_PRED_IOU", "CANDIDATE_STABILITY", "CANDIDATE_NMS", "STABILITY_OFFSET",
)  # fmt: skip
DESCRIPTOR_SETTINGS = ("ENCLOSED_FRACTION", "DESCRIPTOR_DIM", "OUTER_DUPLICATE_IOU", "OWN_COLOUR_DISTANCE")
PICK_MARGIN = 0.05  # IoU: a one-object phrase's pick is right within this of its best candidate
# The recognizer's buffers set on validation scenes, not learnt (a recognizer from before one existed gets 0).
CALIBRATED_BIASES = {"presence_bias", "instance_bias"}
# The presence biases calibrate_presence chooses among (logits; a phrase's presence logit is its best score plus
# the bias).
PRESENCE_BIASES = np.round(np.arange(-3.0, 3.0001, 0.1), 1)


@dataclass
class CandidateScene:
    """One scene's candidates: descriptors K x DESCRIPTOR_DIM float32, IoU of each with every ground-truth mask
    K x G float16, the scene's phrases as (text, kind, indices of the ground-truth masks it names), the masks
    themselves, bits packed along rows (K x H x W/8 uint8), and their quality as the decoder rated them (K x
    QUALITY_FEATURES float32: predicted IoU, stability score): with those two a new descriptor is computed
    without the grid of clicks again."""

    seed: int
    descriptors: torch.Tensor
    iou: torch.Tensor
    phrases: list[tuple[str, str, tuple[int, ...]]]
    packed_masks: torch.Tensor | None = None
    quality: torch.Tensor | None = None

    def masks(self) -> list[np.ndarray]:
        """The candidate masks, H x W bool each."""
        if self.packed_masks is None:
            raise ValueError(f"scene {self.seed}'s candidates were stored without their masks")
        return list(np.unpackbits(self.packed_masks.numpy(), axis=-1).astype(bool))

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "descriptors": self.descriptors,
            "iou": self.iou,
            "phrases": [[t, k, list(i)] for t, k, i in self.phrases],
            "packed_masks": self.packed_masks,
            "quality": self.quality,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CandidateScene:
        phrases = [(t, k, tuple(i)) for t, k, i in d["phrases"]]
        return cls(
            int(d["seed"]), d["descriptors"], d["iou"], phrases, d.get("packed_masks"), d.get("quality")
        )

    def named_iou(self) -> torch.Tensor:
        """P x K: each candidate's IoU with the best-matching mask each phrase names (0 for absent phrases)."""
        out = torch.zeros(len(self.phrases), len(self.descriptors))
        if len(self.descriptors):
            for row, (_, _, indices) in enumerate(self.phrases):
                if indices:
                    out[row] = self.iou[:, list(indices)].float().amax(dim=1)
        return out


def mask_ious(predicted: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """K x G IoU of every predicted mask with every true one (H x W bool each)."""
    if not predicted or not truth:
        return np.zeros((len(predicted), len(truth)), np.float32)
    a = np.stack(predicted).reshape(len(predicted), -1).astype(np.float32)
    b = np.stack(truth).reshape(len(truth), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return (inter / np.maximum(union, 1.0)).astype(np.float32)


def candidate_scene(
    predictor: SamPredictor, seed: int, per_kind: int, scene_size: int = 256
) -> CandidateScene:
    """Scene ``seed``'s candidates as the predictor finds them at inference (sam_core.text_recognition)."""
    scene = make_scene(seed, scene_size)
    predictor.set_image(scene.image)
    masks, descriptors = predictor.candidates()
    quality = torch.from_numpy(predictor.candidate_outputs().quality())
    iou = torch.from_numpy(mask_ious(masks, scene.masks)).half()
    phrases = [(p.text, p.kind, p.indices) for p in scene_phrases(scene, seed, per_kind)]
    h, w = scene.image.shape[:2]
    packed = np.packbits(np.stack(masks), axis=-1) if masks else np.zeros((0, h, (w + 7) // 8), np.uint8)
    return CandidateScene(
        seed, descriptors.detach().cpu().float(), iou, phrases, torch.from_numpy(packed), quality
    )


def fit_recognizer(ckpt: dict, seed: int = 0) -> tuple[dict, str | None]:
    """(a text checkpoint whose recognizer fits this code, why it changed or None).

    ``ckpt`` itself when its recognizer holds exactly the tensors a MaskRecognizer of its width holds now; with
    presence_bias 0 added when only that is missing (a recognizer from before it was calibrated); otherwise a copy
    whose recognizer starts afresh (initialised from ``seed``), since it was trained on descriptors of another
    size. ValueError when the model has no recognizer."""
    config = SamConfig.from_dict(ckpt["sam_config"])
    if not config.text_recognizer:
        raise ValueError("this text model has no mask recognizer (trained without recognizer_width)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = text_recognition.MaskRecognizer(config.text_dim, config.text_recognizer).state_dict()
    held = {
        k[len(RECOGNIZER_PREFIX) :]: v for k, v in ckpt["model"].items() if k.startswith(RECOGNIZER_PREFIX)
    }
    if set(held) == set(fresh) and all(held[k].shape == fresh[k].shape for k in fresh):
        return ckpt, None
    model = dict(ckpt["model"])
    biases = set(fresh) - set(held)
    if (
        biases <= CALIBRATED_BIASES
        and set(held) <= set(fresh)
        and all(held[k].shape == fresh[k].shape for k in held)
    ):
        for name in sorted(biases):
            model[RECOGNIZER_PREFIX + name] = fresh[name]
        names = " and ".join(name.replace("_", " ") for name in sorted(biases))
        return {**ckpt, "model": model}, f"its recognizer has no {names} yet: starting at 0"
    width = held.get("masks.0.weight")
    reads = f"{width.shape[1]}-feature" if width is not None else "other"
    for key in held:
        del model[RECOGNIZER_PREFIX + key]
    model.update({RECOGNIZER_PREFIX + k: v for k, v in fresh.items()})
    why = (
        f"its recognizer reads {reads} descriptors, this code describes a mask with "
        f"{text_recognition.DESCRIPTOR_DIM}: the recognizer starts afresh (seed {seed})"
    )
    return {**ckpt, "model": model}, why


def masks_key(model: Sam) -> str:
    """What a scene's candidate masks depend on: the candidate settings of sam_core.text_recognition
    (MASK_SETTINGS) and the weights that answer the clicks (image encoder, prompt encoder's point and box tensors,
    mask decoder), as a sha256."""
    digest = hashlib.sha256()
    digest.update(json.dumps([getattr(text_recognition, n) for n in MASK_SETTINGS]).encode())
    state = model.state_dict()
    for name in sorted(set(state) - set(text_keys(state))):  # the text path does not change the candidates
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def candidates_key(model: Sam) -> str:
    """What a scene's cached candidates depend on: their masks (``masks_key``) and how they are described
    (DESCRIPTOR_SETTINGS and sam_core.text_recognition's source), as a sha256. A cache chunk written under
    another key is computed again, or only described again when its masks_key is this model's."""
    return _described_key(masks_key(model))


def _described_key(mask_key: str) -> str:
    """``candidates_key`` of the model whose ``masks_key`` is ``mask_key`` (the weights hashed once)."""
    digest = hashlib.sha256(mask_key.encode())
    digest.update(json.dumps([getattr(text_recognition, n) for n in DESCRIPTOR_SETTINGS]).encode())
    digest.update(inspect.getsource(text_recognition).encode())
    return digest.hexdigest()


def build_candidates(
    model: Sam,
    text_encoder: TextEncoder,
    folder: Path,
    split: str,
    count: int,
    per_kind: int,
    progress=None,
) -> list[CandidateScene]:
    """The candidates of the first ``count`` scenes of ``split``, computed in chunks of CHUNK scenes, each saved
    under ``folder`` as it completes; a rerun computes only the chunks missing, or written for other seeds or
    under another ``masks_key``, and describes again the stored masks of those written under another
    ``candidates_key`` alone. Returns them all in seed order. ``progress(done, total, seconds_left)`` is called
    after each scene computed or described (total: the scenes to do in this call)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = split_seeds(split, count)
    mask_key = masks_key(model)
    key = _described_key(mask_key)
    chunks = [seeds[start : start + CHUNK] for start in range(0, len(seeds), CHUNK)]
    stored = [
        _stored(_chunk_path(folder, split, per_kind, chunk[0]), chunk, key, mask_key) for chunk in chunks
    ]
    to_compute = sum(len(chunk) for chunk, (_, fresh) in zip(chunks, stored, strict=True) if not fresh)
    predictor = SamPredictor(model.eval(), text_encoder=text_encoder)
    scenes: list[CandidateScene] = []
    started, computed = time.monotonic(), 0
    for chunk, (rows, fresh) in zip(chunks, stored, strict=True):
        if not fresh:
            old, rows = rows, []
            for i, seed in enumerate(chunk):
                if old is None:
                    with torch.no_grad():
                        rows.append(candidate_scene(predictor, seed, per_kind))
                else:  # the same masks, described by this code
                    rows.append(redescribed(old[i]))
                computed += 1
                if progress:
                    per_scene = (time.monotonic() - started) / computed
                    progress(computed, to_compute, per_scene * (to_compute - computed))
            chunk_file = {"key": key, "masks_key": mask_key, "scenes": [r.to_dict() for r in rows]}
            atomic_save(chunk_file, _chunk_path(folder, split, per_kind, chunk[0]))
        scenes += rows
    return scenes


def redescribed(scene: CandidateScene, scene_size: int = 256) -> CandidateScene:
    """``scene`` with its stored candidate masks described again by sam_core.text_recognition as it is now."""
    masks = scene.masks()
    if scene.quality is None:
        raise ValueError(f"scene {scene.seed}'s candidates were stored without their quality")
    image = make_scene(scene.seed, scene_size).image
    descriptors = (
        torch.from_numpy(text_recognition.mask_descriptors(image, masks, scene.quality.numpy()))
        if masks
        else torch.zeros(0, text_recognition.DESCRIPTOR_DIM)
    )
    return dataclasses.replace(scene, descriptors=descriptors)


def _stored(
    path: Path, seeds: list[int], key: str, mask_key: str
) -> tuple[list[CandidateScene] | None, bool]:
    """(the scenes of a chunk file, whether they are fresh): fresh when it holds ``seeds`` under ``key``; its
    scenes but not fresh when they hold those seeds' masks (``mask_key``) described otherwise; (None, False) when
    it is missing or stale."""
    if not path.exists():
        return None, False
    stored = torch.load(path, weights_only=True)
    if not isinstance(stored, dict) or [d["seed"] for d in stored.get("scenes", [])] != seeds:
        log.warning("%s was written for other seeds; computing it again", path)
        return None, False
    if stored.get("key") == key:
        return [CandidateScene.from_dict(d) for d in stored["scenes"]], True
    if stored.get("masks_key") == mask_key and all(
        d.get("packed_masks") is not None and d.get("quality") is not None for d in stored["scenes"]
    ):
        log.warning("%s holds these masks described by other code or settings; describing them again", path)
        return [CandidateScene.from_dict(d) for d in stored["scenes"]], False
    log.warning("%s was written for other settings or weights; computing it again", path)
    return None, False


def _chunk_path(folder: Path, split: str, per_kind: int, first_seed: int) -> Path:
    return folder / f"{split}_k{per_kind}_{first_seed}.pt"


def balanced_bias(accept: np.ndarray, reject: np.ndarray) -> float:
    """The bias of PRESENCE_BIASES that best separates two sets of logits (``accept`` should reach 0 with it,
    ``reject`` stay below): the best balanced accuracy, the mean of the two sets' accuracies; among ties, the
    middle one. What calibrate_presence and calibrate_instances choose by."""
    balanced = np.array([((accept + b) >= 0).mean() + ((reject + b) < 0).mean() for b in PRESENCE_BIASES])
    ties = PRESENCE_BIASES[np.isclose(balanced, balanced.max())]
    return float(ties[len(ties) // 2])


@dataclass
class RecognizerTrainConfig:
    """The second stage's recipe (see the module docstring); the defaults are the recipe."""

    # At lr 1e-3 the recognizer underfit 600 scenes (it picked within 0.05 IoU of the best candidate for 52-64% of
    # its training phrases); at 3e-3 it fits them (0.95 by step 3,000; val pick IoU 0.687 at step 2,000, against
    # 0.606 at 1e-3). 1,000 scenes (about 2 s each to compute, once) took the val pick to 0.70-0.71 on the first 50
    # val scenes, 0.65 on 150; 2,000 scenes took test mIoU on 200 scenes from 0.650 to 0.669 (the first 50 val and
    # test scenes are easier than the rest: 50 val scenes chose checkpoints that 200 test scenes scored 0.05 lower).
    train_scenes: int = 2000
    val_scenes: int = 150
    per_kind: int = 6  # sam_core.phrases.scene_phrases(per_kind=...)
    steps: int = 2000
    scenes_per_step: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    decay_fraction: float = (
        1.0  # as sam_core.train.TrainConfig (its lr_at is the schedule): cosine over all steps
    )
    weight_decay: float = 0.01
    positive_iou: float = 0.5
    negative_iou: float = 0.3
    pick_weight: float = 1.0
    presence_weight: float = 1.0
    seed: int = 0
    metadata: dict = field(default_factory=dict)

    def validate(self) -> None:
        if min(self.train_scenes, self.val_scenes, self.per_kind, self.steps, self.scenes_per_step) < 1:
            raise ValueError(f"scene counts, per_kind, steps and scenes_per_step must be >= 1: {self}")
        held = len(split_seeds("val"))
        if self.val_scenes > held:
            raise ValueError(f"val_scenes {self.val_scenes}: the val split holds {held} scenes")
        if not 0.0 <= self.negative_iou <= self.positive_iou <= 1.0:
            raise ValueError(
                f"need 0 <= negative_iou <= positive_iou <= 1, got {self.negative_iou} and {self.positive_iou}"
            )


class RecognizerTrainer:
    """Trains ``model.prompt_encoder.text_recognizer`` on CandidateScenes; nothing else of the model changes.

    Text embeddings come from ``text_encoder`` (frozen, in eval mode), computed once per phrase."""

    def __init__(
        self,
        config: RecognizerTrainConfig,
        model: Sam,
        text_encoder: TextEncoder,
        scenes: list[CandidateScene],
    ) -> None:
        config.validate()
        recognizer = model.prompt_encoder.text_recognizer
        if recognizer is None:
            raise ValueError("the model has no mask recognizer to train (SamConfig.text_recognizer = 0)")
        if not scenes:
            raise ValueError("no training scenes")
        self.config, self.model, self.recognizer = config, model, recognizer
        self.scenes = [s for s in scenes if len(s.descriptors) and s.phrases]
        self.text_encoder = text_encoder.eval()
        self.texts: dict[str, torch.Tensor] = {}
        self.labels = [s.named_iou() for s in self.scenes]
        model.requires_grad_(False)
        recognizer.requires_grad_(True)
        matrices = [p for p in recognizer.parameters() if p.ndim >= 2]
        others = [p for p in recognizer.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": config.weight_decay},
                {"params": others, "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        self.rng = np.random.default_rng(config.seed)
        self.step_index = 0
        self.history: list[dict] = []

    def text(self, texts: list[str]) -> torch.Tensor:
        """B x text_dim embeddings, each phrase encoded once."""
        return frozen_embeddings(self.text_encoder, self.texts, texts)

    def scene_loss(self, scene: CandidateScene, named: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Summed loss over one scene's phrases (see the module docstring), and its counts."""
        config = self.config
        logits = self.recognizer(scene.descriptors, self.text([p[0] for p in scene.phrases]))  # P x K
        positive = named >= config.positive_iou
        labelled = positive | (named < config.negative_iou)
        pairs = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
        loss = ((pairs * labelled).sum(dim=1) / labelled.sum(dim=1).clamp(min=1)).sum()
        present = torch.tensor([bool(p[2]) for p in scene.phrases])
        has_positive = positive.any(dim=1)
        best = torch.where(has_positive, logits.masked_fill(~positive, -1e4).amax(dim=1), logits.amax(dim=1))
        counted = has_positive | ~present  # a present phrase no candidate covers teaches nothing true
        presence = F.binary_cross_entropy_with_logits(best, present.float(), reduction="none")
        loss = loss + config.presence_weight * (presence * counted).sum()
        picked = []
        for row, (_, _, indices) in enumerate(scene.phrases):
            if len(indices) == 1 and has_positive[row]:
                # Candidates hold near-duplicates (NMS keeps masks up to IoU 0.7 with each other): the pick is
                # right when it lands on any candidate within PICK_MARGIN of the best, so the softmax is pulled
                # towards that set as a whole, not towards one of its members.
                good = positive[row] & (named[row] >= named[row].max() - PICK_MARGIN)
                loss = loss + config.pick_weight * (
                    torch.logsumexp(logits[row], 0) - torch.logsumexp(logits[row][good], 0)
                )
                picked.append(bool(good[logits[row].argmax()]))
        return loss, {"phrases": len(scene.phrases), "picked": picked}

    def step(self) -> dict:
        """One optimisation step over ``scenes_per_step`` scenes drawn at random; returns its stats."""
        self.recognizer.train()
        lr = lr_at(self.step_index, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        chosen = self.rng.choice(
            len(self.scenes), min(self.config.scenes_per_step, len(self.scenes)), replace=False
        )
        total, phrases, picked = None, 0, []
        for i in chosen:
            loss, counts = self.scene_loss(self.scenes[int(i)], self.labels[int(i)])
            total = loss if total is None else total + loss
            phrases += counts["phrases"]
            picked += counts["picked"]
        total = total / phrases
        total.backward()
        self.optimizer.step()
        self.step_index += 1
        stats = {
            "step": self.step_index,
            "loss": total.item(),
            "picked": float(np.mean(picked)) if picked else 0.0,
            "lr": lr,
        }
        self.history.append(stats)
        return stats

    @torch.no_grad()
    def best_logits(self, scenes: list[CandidateScene]) -> tuple[np.ndarray, np.ndarray]:
        """(best score of each absent phrase, of each present phrase) over ``scenes``' candidates, without the
        presence bias; a scene without candidates gives NO_CANDIDATE_LOGIT."""
        self.recognizer.eval()
        absent, present = [], []
        for scene in scenes:
            if not scene.phrases:
                continue
            if len(scene.descriptors):
                logits = self.recognizer(scene.descriptors, self.text([p[0] for p in scene.phrases]))
                tops = text_recognition.presence_logits(logits).tolist()
            else:
                tops = [text_recognition.NO_CANDIDATE_LOGIT] * len(scene.phrases)
            for top, (_, _, indices) in zip(tops, scene.phrases, strict=True):
                (present if indices else absent).append(top)
        return np.asarray(absent), np.asarray(present)

    def calibrate_presence(self, scenes: list[CandidateScene]) -> float:
        """Set the recognizer's presence_bias to the one of PRESENCE_BIASES with the best balanced presence
        accuracy on ``scenes`` (the mean of the accuracies on absent and present phrases; among ties, the middle
        one); returns it. Calibrate on validation scenes, never on the scenes a figure is reported on."""
        absent, present = self.best_logits(scenes)
        if not len(absent) or not len(present):
            raise ValueError("calibrating presence needs both absent and present phrases")
        bias = balanced_bias(present, absent)
        self.recognizer.presence_bias.fill_(bias)
        return bias

    @torch.no_grad()
    def instance_logits(self, scenes: list[CandidateScene]) -> tuple[np.ndarray, np.ndarray]:
        """(logits of the candidates that are one of what a several-object phrase names, of those that are not)
        over ``scenes``, labelled as training labels them (IoU >= positive_iou, < negative_iou), without the
        instance bias."""
        self.recognizer.eval()
        named, other = [], []
        for scene, labels in zip(scenes, (s.named_iou() for s in scenes), strict=True):
            rows = [i for i, (_, _, indices) in enumerate(scene.phrases) if len(indices) > 1]
            if not rows or not len(scene.descriptors):
                continue
            logits = self.recognizer(scene.descriptors, self.text([scene.phrases[i][0] for i in rows]))
            iou = labels[rows]
            named += logits[iou >= self.config.positive_iou].tolist()
            other += logits[iou < self.config.negative_iou].tolist()
        return np.asarray(named), np.asarray(other)

    def calibrate_instances(self, scenes: list[CandidateScene]) -> float:
        """Set the recognizer's instance_bias to the one of PRESENCE_BIASES with the best balanced accuracy of
        the instance decision on ``scenes``' candidates for several-object phrases (the mean of the accuracies on
        the candidates they name and those they do not, as calibrate_presence; among ties, the middle one);
        returns it. Calibrate on validation scenes, never on the scenes a figure is reported on."""
        named, other = self.instance_logits(scenes)
        if not len(named) or not len(other):
            raise ValueError(
                "calibrating instances needs candidates named by several-object phrases, and others"
            )
        bias = balanced_bias(named, other)
        self.recognizer.instance_bias.fill_(bias)
        return bias

    @torch.no_grad()
    def evaluate(self, scenes: list[CandidateScene]) -> dict:
        """Figures of the recognizer alone on the candidates of ``scenes``:
        pick_iou (the IoU of the candidate it scores best with the object a one-object phrase names), best_iou
        (the best any candidate reaches there), recall@0.5 (instances of several-object phrases covered at IoU
        0.5 by a candidate it takes for an instance, with its instance_bias) and precision@0.5 (of those
        candidates, the fraction at IoU 0.5 with one of the instances), presence accuracy on absent and present
        phrases (with the recognizer's presence_bias)."""
        self.recognizer.eval()
        bias = float(self.recognizer.presence_bias)
        instance_bias = float(self.recognizer.instance_bias)
        pick, best, found, instances, absent, present = [], [], 0, 0, [], []
        taken, right = 0, 0
        for scene in scenes:
            if not scene.phrases:
                continue
            if len(scene.descriptors) == 0:
                absent += [True for p in scene.phrases if not p[2]]
                present += [False for p in scene.phrases if p[2]]
                continue
            logits = self.recognizer(scene.descriptors, self.text([p[0] for p in scene.phrases]))
            for row, (_, _, indices) in enumerate(scene.phrases):
                top = float(logits[row].max()) + bias
                if not indices:
                    absent.append(top < 0)
                    continue
                present.append(top >= 0)
                iou = scene.iou[:, list(indices)].float()  # K x I
                if len(indices) == 1:
                    pick.append(float(iou[logits[row].argmax(), 0]))
                    best.append(float(iou[:, 0].max()))
                else:
                    kept = logits[row] + instance_bias >= 0
                    instances += len(indices)
                    found += int((iou[kept] >= 0.5).any(dim=0).sum()) if kept.any() else 0
                    taken += int(kept.sum())
                    right += int((iou[kept] >= 0.5).any(dim=1).sum()) if kept.any() else 0
        return {
            "pick_iou": float(np.mean(pick)) if pick else 0.0,
            "best_iou": float(np.mean(best)) if best else 0.0,
            "phrases_one": len(pick),
            "recall@0.5": found / instances if instances else 0.0,
            "precision@0.5": right / taken if taken else 0.0,
            "instances": instances,
            "presence_accuracy_absent": float(np.mean(absent)) if absent else 0.0,
            "presence_accuracy_present": float(np.mean(present)) if present else 0.0,
            "presence_bias": bias,
            "instance_bias": instance_bias,
        }

    def state(self) -> dict:
        """The recognizer's weights, optimizer, step, random generator and history: what resuming needs."""
        return {
            "recognizer": self.recognizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_index,
            "rng": json.dumps(self.rng.bit_generator.state),
            "history": list(self.history),
            "config": dataclasses.asdict(self.config),
        }

    def restore(self, state: dict) -> None:
        self.recognizer.load_state_dict(state["recognizer"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = int(state["step"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.history = list(state["history"])


def score(figures: dict) -> float:
    """One number to rank recognizers: pick IoU + recall + the mean of the two presence accuracies."""
    presence = (figures["presence_accuracy_absent"] + figures["presence_accuracy_present"]) / 2
    return figures["pick_iou"] + figures["recall@0.5"] + presence
