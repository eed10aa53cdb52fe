"""A text-prompted SAM: a Sam built with a text path plus the text encoder it was trained with, saved and loaded
as one checkpoint.

Checkpoint format (torch.load(weights_only=True) reads it; sam_core.checkpoint's rules apply to "model"):
    {"model": Sam state dict, text path included,
     "sam_config": SamConfig.to_dict() (text_dim > 0),
     "text_encoder": {"kind": "embedded", "config": {...}, "state": state dict}
                   | {"kind": "clip", "config": {"model_name": ..., "checkpoint": local file or None}},
     "config": the training recipe, "metadata": {...}}
CLIP's weights are not copied into it: the record names the user's file, and ``load_text_model(...,
clip_checkpoint=...)`` points it elsewhere on another machine.

    sam, text_encoder = load_text_model("run/best.pt")
    predictor = SamPredictor(sam, text_encoder=text_encoder)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sam_core.build import CONFIGS, SamConfig, build_sam_from_config
from sam_core.checkpoint import RECOGNIZER_PREFIX, config_name, load_weights, read_checkpoint
from sam_core.clip_text import ClipTextEncoder
from sam_core.embedded import EMBEDDED_CHECKPOINT
from sam_core.sam import Sam
from sam_core.text_encoder import EmbeddedTextEncoder, TextEncoder

TEXT_ENCODERS = ("embedded", "clip")


def make_text_encoder(kind: str = "embedded", **config) -> TextEncoder:
    """A text encoder by kind: "embedded" (EmbeddedTextEncoder(**config)) or "clip"
    (ClipTextEncoder(model_name=..., checkpoint=...))."""
    if kind == "embedded":
        return EmbeddedTextEncoder(**config)
    if kind == "clip":
        return ClipTextEncoder(**config)
    raise ValueError(f"unknown text encoder {kind!r}; choose one of {TEXT_ENCODERS}")


def text_encoder_from_record(record: dict, clip_checkpoint: str | Path | None = None) -> TextEncoder:
    """Rebuild the text encoder a checkpoint's "text_encoder" entry describes (CLIP from ``clip_checkpoint``
    when given, else from the file the record names)."""
    kind, config = record["kind"], dict(record.get("config") or {})
    if kind == "clip" and clip_checkpoint is not None:
        config["checkpoint"] = str(clip_checkpoint)
    if kind == "clip" and config.get("checkpoint") is None:
        # Its text path learnt the embeddings of one random initialisation, which a rebuild would not repeat.
        raise ValueError(
            "this text model was trained on a CLIP text tower with random weights (no checkpoint file), which "
            "cannot be rebuilt; train on a local CLIP checkpoint, or pass clip_checkpoint= to use one"
        )
    encoder = make_text_encoder(kind, **config)
    if kind == "embedded":
        encoder.load_state_dict(record["state"], strict=True)
    return encoder.eval()


def text_model_from_checkpoint(
    checkpoint: str | Path | None = None,
    text_dim: int = 128,
    text_tokens: int = 2,
    config: str | None = None,
    text_recognizer: int = 0,
) -> Sam:
    """A Sam with a fresh text path of ``text_dim`` on the weights of a checkpoint without one (default: the
    embedded model), the starting point of training the text path (the text tensors are left at their
    initialisation, as sam_core.checkpoint's rule allows when asked). text_recognizer: the width of its mask
    recognizer (sam_core.text_recognition), 0 for none.

    config: the sam_core.build.CONFIGS name of a checkpoint that records none (Meta's bare state dicts:
    "vit_b", "vit_l", "vit_h"); a checkpoint of our trainer records its own."""
    source = checkpoint if checkpoint is not None else EMBEDDED_CHECKPOINT
    ckpt = read_checkpoint(source)
    if ckpt.get("sam_config"):
        cfg = SamConfig.from_dict(ckpt["sam_config"])
    elif config is not None or ckpt.get("config"):
        name = config or config_name(ckpt)
        if name not in CONFIGS:
            raise ValueError(f"unknown SAM config {name!r}; choose one of {sorted(CONFIGS)}")
        cfg = CONFIGS[name]
    else:
        raise ValueError(
            f"{source}: a bare state dict records no config; name it, e.g. config='vit_h' for sam_vit_h_4b8939.pth"
        )
    model = build_sam_from_config(
        dataclasses.replace(cfg, text_dim=text_dim, text_tokens=text_tokens, text_recognizer=text_recognizer)
    )
    load_weights(model, ckpt, allow_untrained_text=True)
    return model.eval()


def text_checkpoint(model: Sam, text_encoder: TextEncoder, config: dict, metadata: dict) -> dict:
    """The checkpoint dict of a text model (see the module docstring)."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "sam_config": model.config.to_dict(),
        "text_encoder": _cpu(text_encoder.record()),
        "config": config,
        "metadata": metadata,
    }


def is_text_checkpoint(ckpt: dict) -> bool:
    """Whether a checkpoint dict (sam_core.checkpoint.read_checkpoint) is a text model's: a text encoder and a
    text_dim > 0 recorded."""
    return bool(ckpt.get("text_encoder")) and bool((ckpt.get("sam_config") or {}).get("text_dim"))


def text_sam_from_checkpoint(ckpt: dict, name: str = "<in memory>") -> Sam:
    """The Sam of a text checkpoint dict (its text path loaded strictly), in eval mode, without its text
    encoder: what answers clicks and boxes, or takes an encoder built later (``text_encoder_from_record``).
    ValueError naming ``name`` when the checkpoint has no text path."""
    if not is_text_checkpoint(ckpt):
        raise ValueError(
            f"{name}: not a text model checkpoint (no text encoder or text_dim recorded); a plain SAM checkpoint "
            "loads with build_sam, and sam_core.text_model.text_model_from_checkpoint starts a text path on it"
        )
    model = build_sam_from_config(SamConfig.from_dict(ckpt["sam_config"]))
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(RECOGNIZER_PREFIX)}
    held = {k: tuple(v.shape) for k, v in ckpt["model"].items() if k.startswith(RECOGNIZER_PREFIX)}
    if wanted and held and wanted != held:
        raise ValueError(
            f"{name}: its mask recognizer is of an earlier version (trained for other descriptors, or before it "
            "calibrated its presence and instance thresholds); train its stage 2 again: "
            "scripts/train_recognizer.py --base CHECKPOINT --run-dir DIR starts the recognizer afresh on it"
        )
    load_weights(model, ckpt)
    return model.eval()


def load_text_model(
    checkpoint: str | Path | dict, clip_checkpoint: str | Path | None = None
) -> tuple[Sam, TextEncoder]:
    """(Sam with its text path, its text encoder), both in eval mode, from a text checkpoint (path, fsspec URL
    or loaded dict). ValueError naming the file when it is a checkpoint without a text path."""
    ckpt = read_checkpoint(checkpoint)
    name = "<in memory>" if isinstance(checkpoint, dict) else str(checkpoint)
    model = text_sam_from_checkpoint(ckpt, name)
    encoder = text_encoder_from_record(ckpt["text_encoder"], clip_checkpoint)
    if encoder.embed_dim != model.prompt_encoder.text_dim:
        raise ValueError(
            f"{name}: the text encoder gives {encoder.embed_dim}-d embeddings but the model's text path takes "
            f"{model.prompt_encoder.text_dim}"
        )
    return model, encoder


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value
