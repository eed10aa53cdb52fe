"""The embedded default model: the tiny config trained by sam_core.train on the synthetic set, shipped in
sam_core/weights/ (see MODEL_CARD.md there), plus the checkpoint reading both it and the trainer use."""

from __future__ import annotations

import io
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_CHECKPOINT = WEIGHTS_DIR / "sam_tiny_synthetic.pt"


def read_checkpoint(source) -> dict:
    """A checkpoint as {"model": state_dict (fp32), "config": ..., "metadata": ...}.

    source: a path, an fsspec URL, raw bytes, or an already loaded dict. A bare state dict is accepted and
    wrapped; fp16-stored tensors come back as fp32.
    """
    if isinstance(source, dict):
        ckpt = source
    else:
        if isinstance(source, bytes | bytearray):
            buffer = io.BytesIO(source)
        else:
            import fsspec

            with fsspec.open(str(source), "rb") as f:
                buffer = io.BytesIO(f.read())
        # TorchVersion is a str subclass some writers store in metadata; allowing it keeps weights_only safe.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            ckpt = torch.load(buffer, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {source!r} holds a {type(ckpt).__name__}, expected a dict")
    if "model" not in ckpt:
        ckpt = {"model": ckpt, "config": None, "metadata": {}}
    state = {
        k: (v.float() if torch.is_tensor(v) and v.dtype == torch.float16 else v)
        for k, v in ckpt["model"].items()
    }
    return {**ckpt, "model": state}


def load_weights(model: torch.nn.Module, source) -> dict:
    """Load a checkpoint into ``model`` strictly; a checkpoint of another config raises ValueError naming the
    mismatched tensors. Returns the checkpoint dict (config, metadata)."""
    ckpt = read_checkpoint(source)
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt["model"]))
    unexpected = sorted(set(ckpt["model"]) - set(own))
    wrong_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in ckpt["model"].items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"checkpoint {source if not isinstance(source, dict | bytes) else '<in memory>'} does not fit this "
            f"model (another config?): {len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected "
            f"e.g. {unexpected[:3]}, {len(wrong_shape)} of another shape e.g. {wrong_shape[:3]}"
        )
    model.load_state_dict(ckpt["model"], strict=True)
    return ckpt


def load_embedded(checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The embedded tiny SAM, in eval mode, weights from sam_core/weights (or ``checkpoint``)."""
    from sam_core.train import build_model

    path = Path(checkpoint) if checkpoint is not None else EMBEDDED_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(
            f"embedded checkpoint {path} is missing; train it with scripts/train_embedded.py"
        )
    model = build_model("tiny")
    load_weights(model, path)
    return model.eval()
