"""The embedded default model: a small config (today "tiny_conv") trained by sam_core.train on the synthetic
set, shipped in sam_core/weights/ (see MODEL_CARD.md there), plus the checkpoint reading both it and the trainer
use. Which config it is, the checkpoint records (``config_name``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from sam_core.build import check_state_dict, load_checkpoint_object

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_CHECKPOINT = WEIGHTS_DIR / "sam_tiny_synthetic.pt"


def read_checkpoint(source) -> dict:
    """A checkpoint as {"model": state_dict (fp32), "config": ..., "metadata": ...}.

    source: a path, an fsspec URL, raw bytes, or an already loaded dict. A bare state dict is accepted and
    wrapped; fp16-stored tensors come back as fp32. Unsafe or foreign files raise ValueError (see
    sam_core.build.load_checkpoint_object).
    """
    ckpt = source if isinstance(source, dict) else load_checkpoint_object(source)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {_name(source)} holds a {type(ckpt).__name__}, expected a dict")
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
    check_state_dict(model, ckpt["model"], f"checkpoint {_name(source)}")
    model.load_state_dict(ckpt["model"], strict=True)
    return ckpt


def config_name(ckpt: dict, default: str = "tiny") -> str:
    """The sam_core.build.CONFIGS name a checkpoint dict records (the trainer's config "model"); ``default`` for
    a bare state dict, which records nothing."""
    return str((ckpt.get("config") or {}).get("model") or default)


@lru_cache(maxsize=4)
def _embedded_config_name(path: str, mtime: float) -> str:
    return config_name(read_checkpoint(path))


def embedded_config_name(checkpoint: str | Path | None = None) -> str:
    """The config name of the embedded checkpoint (read once per file version)."""
    path = Path(checkpoint) if checkpoint is not None else EMBEDDED_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(
            f"embedded checkpoint {path} is missing; train it with scripts/train_embedded.py"
        )
    return _embedded_config_name(str(path), path.stat().st_mtime)


def _name(source) -> str:
    return "<in memory>" if isinstance(source, dict | bytes | bytearray) else str(source)


def load_embedded(checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The embedded SAM, in eval mode, weights from sam_core/weights (or ``checkpoint``), built in the config
    its checkpoint records."""
    from sam_core.train import build_model

    path = Path(checkpoint) if checkpoint is not None else EMBEDDED_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(
            f"embedded checkpoint {path} is missing; train it with scripts/train_embedded.py"
        )
    ckpt = read_checkpoint(path)
    model = build_model(config_name(ckpt))
    load_weights(model, ckpt)
    return model.eval()
