"""Training the text path on the synthetic scenes: phrases (sam_core.phrases) as prompts, their masks as targets.

The image encoder is frozen (its embedding of each scene is computed once and cached); what learns is the text
encoder (the embedded one; CLIP's stays frozen), the prompt encoder's text projection, the mask decoder's
presence token and head and, at ``decoder_lr_scale`` of the lr, the rest of the mask decoder (0 freezes it, and
then every text-free prompt answers exactly as the model the run started from).

Per step, ``scenes_per_step`` scenes with up to ``phrases_per_scene`` phrases each. A phrase that names
something is trained on its mask (the union of what it names) through the single-mask output, with BCE + dice
and the IoU head's MSE, and its presence logit towards 1; with odds ``point_probability`` / ``box_probability``
it comes with a click inside, or the box of, one of the instances it names, and the target is that instance
("the striped ellipse, this one"). An absent phrase trains only its presence logit, towards 0: its masks are
not supervised (SAM 3's split of recognition from localisation). With ``recognizer_width`` > 0 the model also has
a mask recognizer (sam_core.text_recognition), trained on every phrase of the scene (not only the chosen ones:
it costs little beside the decoder) against every ground-truth mask of the scene (wholes, parts and subparts,
described as the candidates are at inference): BCE of each (phrase, mask) score against whether the phrase names
that mask, BCE of the best score against whether the phrase is present (its presence at inference) and, for a
phrase naming one, a softmax over the masks towards it (the one it must pick). Mask losses are taken at the
low-res logits' size (4h x 4w: 128 px for the embedded model), the targets area-averaged down to it, which saves
the upsampling the interactive trainer pays for.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sam_core.losses import iou_head_loss, mask_iou, mask_loss
from sam_core.phrases import scene_phrases
from sam_core.prompts import noisy_box
from sam_core.sam import Sam
from sam_core.synthetic import SPLITS, make_scene, split_seeds
from sam_core.text_encoder import TextEncoder
from sam_core.text_model import make_text_encoder, text_checkpoint, text_model_from_checkpoint
from sam_core.text_recognition import mask_descriptors
from sam_core.train import encode, lr_at
from sam_core.train_data import pad_to, resize_longest_side


@dataclass
class TextTrainConfig:
    """Everything a run of the text path depends on; the defaults run (the embedded model and text encoder)."""

    base_checkpoint: str | None = None  # a SAM checkpoint without a text path; None: the embedded model
    base_config: str | None = (
        None  # its CONFIGS name when it records none (Meta's: "vit_b", "vit_l", "vit_h")
    )
    text_encoder: str = "embedded"  # "embedded" or "clip" (sam_core.text_model.make_text_encoder)
    text_encoder_config: dict = field(
        default_factory=dict
    )  # e.g. {"model_name": "ViT-B-32", "checkpoint": PATH}
    text_tokens: int = 2
    steps: int = 3000
    scenes_per_step: int = 2
    phrases_per_scene: int = 8
    phrases_per_kind: int = 3  # sam_core.phrases.scene_phrases(per_kind=...): what a scene offers
    point_probability: float = 0.2
    box_probability: float = 0.1
    # Odds of a click and the box together: the prompt a recognizer model gives the decoder (inside its mask, and
    # its box).
    point_box_probability: float = 0.0
    recognizer_width: int = 0  # > 0: a mask recognizer of this width (sam_core.text_recognition); 0: none
    recognizer_weight: float = 1.0
    pick_weight: float = 0.2  # the softmax towards the one mask a one-object phrase names
    lr: float = 5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 1.0  # as sam_core.train.TrainConfig: the cosine spans this last fraction
    weight_decay: float = 0.01
    # The rest of the mask decoder learns at lr * this (0: frozen, clicks answer exactly as before). On the same
    # 161 batches from the embedded model, 0.1 against 0: training mask IoU over steps 130-161 0.402 against 0.367,
    # loss 0.907 against 0.991; its price, measured on clicks after 186 steps (8 val scenes, 3 clicks): mIoU@1
    # oracle 0.725 -> 0.700, mIoU@3 0.751 -> 0.741 (confident 0.503 -> 0.534). scripts/train_text.py tracks both.
    decoder_lr_scale: float = 0.1
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    iou_loss_weight: float = 1.0
    presence_weight: float = 1.0
    # Train on the split's first N scenes, each encoded once and cached (about 0.6 MB a scene for the embedded
    # model); None: a new scene every time, encoded every time.
    dataset_size: int | None = 512
    data_split: str = "train"
    scene_size: int = 256
    seed: int = 0
    metadata: dict = field(default_factory=dict)

    def validate(self) -> None:
        if min(self.steps, self.scenes_per_step, self.phrases_per_scene, self.phrases_per_kind) < 1:
            raise ValueError(
                f"steps, scenes_per_step, phrases_per_scene, phrases_per_kind must be >= 1: {self}"
            )
        for name in ("point_probability", "box_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.point_probability + self.box_probability + self.point_box_probability > 1.0:
            raise ValueError("point_probability + box_probability + point_box_probability must be at most 1")
        if not 0.0 <= self.point_box_probability <= 1.0:
            raise ValueError(f"point_box_probability must be in [0, 1], got {self.point_box_probability}")
        if self.recognizer_width < 0:
            raise ValueError(f"recognizer_width must be >= 0, got {self.recognizer_width}")
        if self.decoder_lr_scale < 0:
            raise ValueError(f"decoder_lr_scale must be >= 0, got {self.decoder_lr_scale}")
        if self.dataset_size is not None and self.dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1 or None, got {self.dataset_size}")


def frozen_embeddings(
    text_encoder: TextEncoder,
    cache: dict[str, torch.Tensor],
    texts: list[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """B x D float32 embeddings of ``texts`` by a frozen ``text_encoder``, each phrase encoded once: kept in
    ``cache`` (phrase -> D tensor on ``device``) for the next call."""
    missing = [t for t in dict.fromkeys(texts) if t not in cache]
    if missing:
        with torch.no_grad():
            for text, row in zip(missing, text_encoder.encode(missing), strict=True):
                cache[text] = row.to(device, torch.float32)
    return torch.stack([cache[t] for t in texts])


@dataclass
class SceneSample:
    """One scene ready for text training: its embedding 1 x C x h x w (float16), every instance mask at the
    low-res logits' size (M x 4h x 4w bool) and at the encoder's input size (M x S x S/8 uint8, bits packed
    along rows: a cache of 512 scenes would hold 300 MB of them unpacked; ``instance`` unpacks one, for clicks
    and boxes), and its phrases as (text, kind, instance indices). For a recognizer model also every mask's
    descriptor (M x DESCRIPTOR_DIM float32, sam_core.text_recognition.mask_descriptors)."""

    embedding: torch.Tensor
    low_res: torch.Tensor
    packed: np.ndarray
    phrases: list[tuple[str, str, tuple[int, ...]]]
    descriptors: torch.Tensor | None = None

    def instance(self, index: int) -> np.ndarray:
        """Instance ``index`` at the encoder's input size, S x S bool."""
        return np.unpackbits(self.packed[index], axis=-1).astype(bool)


def prepare_scene(model: Sam, seed: int, scene_size: int, per_kind: int) -> SceneSample:
    """Encode scene ``seed`` and gather its phrases (see SceneSample); the masks' descriptors too when the model
    has a mask recognizer."""
    scene = make_scene(seed, scene_size)
    size = model.image_encoder.img_size
    image = pad_to(resize_longest_side(scene.image, size, cv2.INTER_LINEAR), size)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None].to(model.device)
    with torch.no_grad():
        embedding = encode(model, pixels)
    full = np.stack(
        [pad_to(resize_longest_side(m.astype(np.uint8), size, cv2.INTER_NEAREST), size) for m in scene.masks]
    )
    low = model.prompt_encoder.mask_input_size
    low_res = F.adaptive_avg_pool2d(torch.from_numpy(full).float()[None], low)[0] > 0.5
    phrases = [(p.text, p.kind, p.indices) for p in scene_phrases(scene, seed, per_kind)]
    sample = SceneSample(embedding.half(), low_res, np.packbits(full.astype(bool), axis=-1), phrases)
    if model.prompt_encoder.text_recognizer is not None:
        sample.descriptors = torch.from_numpy(mask_descriptors(scene.image, scene.masks))
    return sample


class TextTrainer:
    """Model, text encoder, optimizer and counters of one run of the text path; ``step()`` does one step.

    model: a Sam with a text path (default: ``text_model_from_checkpoint(config.base_checkpoint)``);
    text_encoder: default ``make_text_encoder(config.text_encoder, **config.text_encoder_config)``."""

    def __init__(
        self,
        config: TextTrainConfig,
        model: Sam | None = None,
        text_encoder: TextEncoder | None = None,
        device: str = "cpu",
    ) -> None:
        config.validate()
        self.config = config
        self.device = torch.device(device)
        # The fresh text path starts from the seed, so two runs of one recipe start equal (and a resumed run
        # equals an uninterrupted one); the caller's global random state is left as it was.
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.text_encoder = text_encoder or make_text_encoder(
                config.text_encoder, **config.text_encoder_config
            )
            self.model = model or text_model_from_checkpoint(
                config.base_checkpoint,
                text_dim=self.text_encoder.embed_dim,
                text_tokens=config.text_tokens,
                config=config.base_config,
                text_recognizer=config.recognizer_width,
            )
        if self.model.prompt_encoder.text_dim != self.text_encoder.embed_dim:
            raise ValueError(
                f"the model's text path takes {self.model.prompt_encoder.text_dim}-d embeddings, the "
                f"{self.text_encoder.name} gives {self.text_encoder.embed_dim}-d ones"
            )
        self.model.to(self.device)
        self.text_encoder.to(self.device)
        self.optimizer = self._optimizer()
        self.rng = np.random.default_rng(config.seed)
        self.seeds = split_seeds(config.data_split, config.dataset_size) if config.dataset_size else None
        self.cache: dict[int, SceneSample] = {}
        self.text_encoder_trains = any(p.requires_grad for p in self.text_encoder.parameters())
        self.text_cache: dict[str, torch.Tensor] = {}
        self.step_index = 0
        self.history: list[dict] = []
        self.started = time.monotonic()
        self.seconds_before = 0.0

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the text path (text projection, presence token and head, a trainable text encoder) at the
        lr and the rest of the mask decoder at lr * decoder_lr_scale; everything else frozen. Weight decay on
        matrices only."""
        self.model.requires_grad_(False)
        text_params = list(self.model.prompt_encoder.text_projection.parameters())
        text_params += list(self.model.mask_decoder.presence_token.parameters())
        text_params += list(self.model.mask_decoder.presence_head.parameters())
        text_params += [p for p in self.text_encoder.parameters() if p.requires_grad]
        if self.model.prompt_encoder.text_recognizer is not None:
            text_params += list(self.model.prompt_encoder.text_recognizer.parameters())
        decoder_params = []
        if self.config.decoder_lr_scale > 0:
            presence = {id(p) for p in text_params}
            decoder_params = [p for p in self.model.mask_decoder.parameters() if id(p) not in presence]
        groups = []
        for params, scale in ((text_params, 1.0), (decoder_params, self.config.decoder_lr_scale)):
            for p in params:
                p.requires_grad_(True)
            matrices = [p for p in params if p.ndim >= 2 and p.shape[0] > 1]
            others = [p for p in params if not (p.ndim >= 2 and p.shape[0] > 1)]
            groups += [
                {"params": matrices, "weight_decay": self.config.weight_decay, "lr_scale": scale},
                {"params": others, "weight_decay": 0.0, "lr_scale": scale},
            ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.config.lr)

    def _scene(self) -> SceneSample:
        if self.seeds is None:
            seeds = SPLITS[self.config.data_split]
            seed = seeds[int(self.rng.integers(0, len(seeds)))]
            return prepare_scene(self.model, seed, self.config.scene_size, self.config.phrases_per_kind)
        index = int(self.rng.integers(0, len(self.seeds)))
        if index not in self.cache:
            self.cache[index] = prepare_scene(
                self.model, self.seeds[index], self.config.scene_size, self.config.phrases_per_kind
            )
        return self.cache[index]

    def step(self) -> dict:
        """One optimisation step; returns the logged stats (loss, its parts, IoU of the present phrases'
        masks, presence accuracy, phrases)."""
        self.model.train()
        self.model.image_encoder.eval()
        self.text_encoder.train()
        lr = lr_at(self.step_index, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"mask": 0.0, "presence": 0.0, "iou": [], "presence_correct": [], "phrases": 0}
        loss = None
        for _ in range(self.config.scenes_per_step):
            sample = self._scene()
            scene_loss = self.scene_loss(sample, totals)
            if scene_loss is not None:
                loss = scene_loss if loss is None else loss + scene_loss
        if loss is None:
            raise ValueError(f"{self.config.scenes_per_step} scenes in a row offered no phrase")
        loss = loss / self.config.scenes_per_step
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at step {self.step_index}")
        self.optimizer.step()
        self.step_index += 1
        stats = {
            "step": self.step_index,
            "loss": loss.item(),
            "mask": totals["mask"] / self.config.scenes_per_step,
            "presence": totals["presence"] / self.config.scenes_per_step,
            "iou": float(np.mean(totals["iou"])) if totals["iou"] else 0.0,
            "presence_accuracy": float(np.mean(totals["presence_correct"])),
            **{k: totals[k] / self.config.scenes_per_step for k in ("recognizer", "picked") if k in totals},
            "phrases": totals["phrases"],
            "lr": lr,
            "seconds": self.elapsed_seconds(),
        }
        self.history.append(stats)
        return stats

    def scene_loss(self, sample: SceneSample, totals: dict) -> torch.Tensor | None:
        """The loss of one scene's phrases (see the module docstring); adds its parts to ``totals``."""
        config = self.config
        if not sample.phrases:
            return None
        chosen = self.rng.choice(
            len(sample.phrases), min(config.phrases_per_scene, len(sample.phrases)), replace=False
        )
        phrases = [sample.phrases[int(i)] for i in sorted(chosen)]
        text = self._text_embeddings([p[0] for p in phrases])
        embedding = sample.embedding.to(self.device, torch.float32)
        image_pe = self.model.prompt_encoder.get_dense_pe()
        # Three prompt structures, decoded apart (the prompt encoder takes one structure a call): text alone,
        # text and a click, text and a box. Targets: the union of the phrase's instances, or the one instance.
        groups: dict[str, list] = {"text": [], "point": [], "box": [], "point_box": []}
        for row, (_, _, indices) in enumerate(phrases):
            draw = self.rng.random()
            if indices and draw < config.point_probability:
                groups["point"].append((row, int(self.rng.choice(indices))))
            elif indices and draw < config.point_probability + config.box_probability:
                groups["box"].append((row, int(self.rng.choice(indices))))
            elif (
                indices
                and draw < config.point_probability + config.box_probability + config.point_box_probability
            ):
                groups["point_box"].append((row, int(self.rng.choice(indices))))
            else:
                groups["text"].append((row, None))
        total = embedding.new_zeros(())
        if sample.descriptors is not None:
            # Every phrase of the scene, not only the chosen ones: a pass of the recognizer costs little beside the
            # decoder's, and the recognizer is what picks the object. Weighted as the chosen phrases' share.
            every = sample.phrases
            recognizer = self.recognizer_loss(
                sample, every, self._text_embeddings([p[0] for p in every]), totals
            )
            total = total + recognizer * len(phrases) / len(every)
        for kind, members in groups.items():
            if not members:
                continue
            rows = torch.tensor([r for r, _ in members], device=text.device)
            points, boxes = self._geometry(kind, [i for _, i in members], sample)
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None, text=text[rows])
            low_res, iou_pred, presence = self.model.mask_decoder(
                embedding, image_pe, sparse, dense, multimask_output=False, presence=True
            )
            present = torch.tensor([bool(phrases[r][2]) for r, _ in members], device=self.device)
            targets = torch.stack([self._target(sample, phrases[r][2], instance) for r, instance in members])
            targets = targets.to(self.device, torch.float32)[:, None]
            presence_loss = F.binary_cross_entropy_with_logits(presence, present.float(), reduction="sum")
            total = total + config.presence_weight * presence_loss
            totals["presence"] += presence_loss.item() / len(phrases)
            totals["presence_correct"] += ((presence > 0) == present).tolist()
            if present.any():
                logits, target, scores = low_res[present], targets[present], iou_pred[present]
                pixel = mask_loss(logits, target, config.bce_weight, config.dice_weight, "bce")[:, 0]
                iou_loss = iou_head_loss(scores, logits, target)[:, 0]
                total = total + (pixel + config.iou_loss_weight * iou_loss).sum()
                totals["mask"] += pixel.sum().item() / len(phrases)
                totals["iou"] += mask_iou(logits.detach(), target)[:, 0].tolist()
        totals["phrases"] += len(phrases)
        return total / len(phrases)

    def recognizer_loss(
        self, sample: SceneSample, phrases: list, text: torch.Tensor, totals: dict
    ) -> torch.Tensor:
        """The mask recognizer's loss on a scene's phrases, summed over them (see the module docstring); adds it,
        and whether each one-object phrase's mask scored best, to ``totals``."""
        logits = self.model.prompt_encoder.text_recognizer(sample.descriptors.to(self.device), text)  # B x M
        named = torch.zeros_like(logits)
        for row, (_, _, indices) in enumerate(phrases):
            named[row, list(indices)] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, named, reduction="none").mean(dim=1).sum()
        # The best score is the phrase's presence: trained as such, or the many negatives a row holds pull it under
        # 0. Up through the best of the masks it names (the best of all could be a wrong one, and would be
        # rewarded), down through the best of all for a phrase naming none.
        present = named.amax(dim=1)
        best = torch.where(present > 0, logits.masked_fill(named == 0, -1e4).amax(dim=1), logits.amax(dim=1))
        loss = loss + F.binary_cross_entropy_with_logits(best, present, reduction="sum")
        picked = []
        for row, (_, _, indices) in enumerate(phrases):
            if len(indices) == 1:
                target = torch.tensor([indices[0]], device=self.device)
                loss = loss + self.config.pick_weight * F.cross_entropy(logits[row][None], target)
                picked.append(int(logits[row].argmax()) == indices[0])
        totals["recognizer"] = totals.get("recognizer", 0.0) + loss.item() / len(phrases)
        totals["picked"] = totals.get("picked", 0.0) + (float(np.mean(picked)) if picked else 0.0)
        return self.config.recognizer_weight * loss

    def _text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """B x D embeddings of ``texts``; a frozen encoder's (CLIP's) are computed once per phrase and kept (a
        ViT-B-32 text pass over 8 phrases costs more than the rest of a step)."""
        if self.text_encoder_trains:
            return self.text_encoder.encode(texts).to(self.device, torch.float32)
        return frozen_embeddings(self.text_encoder, self.text_cache, texts, self.device)

    def _geometry(self, kind: str, instances: list, sample: SceneSample):
        """Points (B x 1 x 2, labels B x 1) or boxes (B x 4) in the encoder's input frame for the click / box
        groups; (None, None) for text alone."""
        if kind == "text":
            return None, None
        masks = [sample.instance(i) for i in instances]
        boxes = None
        if kind in ("box", "point_box"):
            boxes = np.stack([noisy_box(m, self.rng) for m in masks])
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
        if kind == "box":
            return None, boxes
        coords = []
        for m in masks:
            ys, xs = np.nonzero(m)
            j = int(self.rng.integers(0, len(ys)))
            coords.append([xs[j], ys[j]])
        points = torch.tensor(coords, dtype=torch.float32, device=self.device)[:, None]
        return (points, torch.ones((len(masks), 1), dtype=torch.long, device=self.device)), boxes

    @staticmethod
    def _target(sample: SceneSample, indices: tuple[int, ...], instance: int | None) -> torch.Tensor:
        if instance is not None:
            return sample.low_res[instance]
        if not indices:
            return torch.zeros_like(sample.low_res[0])
        return sample.low_res[list(indices)].any(dim=0)

    def elapsed_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def checkpoint(self, metrics: dict | None = None) -> dict:
        """The text model's checkpoint (sam_core.text_model.text_checkpoint) with this run's recipe and counts."""
        metadata = {
            **self.config.metadata,
            "steps": self.step_index,
            "wall_seconds": round(self.elapsed_seconds(), 1),
            "metrics": metrics or {},
            "torch": str(torch.__version__),
        }
        return text_checkpoint(self.model, self.text_encoder, dataclasses.asdict(self.config), metadata)

    def state(self) -> dict:
        """Everything needed to go on from this step (weights, optimizer, schedule position, random generators,
        history); torch.load(weights_only=True) reads it back."""
        return {
            "model": self.model.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_index,
            "seconds": self.elapsed_seconds(),
            "rng": json.dumps(self.rng.bit_generator.state),
            "history": list(self.history),
            "config": dataclasses.asdict(self.config),
        }

    def restore(self, state: dict) -> None:
        """Go on from ``state()`` of an earlier run of the same recipe (its steps may have been extended)."""
        self.model.load_state_dict(state["model"], strict=True)
        self.text_encoder.load_state_dict(state["text_encoder"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = int(state["step"])
        self.seconds_before = float(state["seconds"])
        self.started = time.monotonic()
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.history = list(state["history"])
