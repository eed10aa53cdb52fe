"""The embedded default model: a small config (today "tiny_conv_slim") trained by sam_core.train on the synthetic
set, shipped in sam_core/weights/ (see MODEL_CARD.md there). Which config it is, the checkpoint records
(``sam_core.checkpoint.config_name``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from sam_core.checkpoint import config_name, load_weights, read_checkpoint
from sam_core.shipped import EMBEDDED_CHECKPOINT, EMBEDDED_TEXT_CHECKPOINT  # noqa: F401 (the second re-exported)
from sam_core.train import build_model


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


def load_embedded(checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The embedded SAM, in eval mode, weights from sam_core/weights (or ``checkpoint``), built in the config
    its checkpoint records."""
    path = Path(checkpoint) if checkpoint is not None else EMBEDDED_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(
            f"embedded checkpoint {path} is missing; train it with scripts/train_embedded.py"
        )
    ckpt = read_checkpoint(path)
    model = build_model(config_name(ckpt))
    load_weights(model, ckpt)
    return model.eval()
