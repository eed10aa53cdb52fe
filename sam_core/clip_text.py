"""CLIP's text encoder as a sam_core text encoder: open_clip's text tower (the official architectures, e.g.
"ViT-B-32": 12 layers, width 512, context 77 BPE tokens, a 512-d embedding), frozen, weights from a local file.

As in the SAM paper (section 7.5), the phrase's CLIP embedding is what the prompt encoder's text projection
turns into prompt tokens; only the projection and the presence head learn. Nothing is ever downloaded: with no
checkpoint the tower keeps open_clip's random initialisation (what the tests use), and a checkpoint must be a
local file that ``open_clip.load_checkpoint`` reads (an open_clip ``.bin`` / ``.pt`` / ``.safetensors`` of the same
model name, e.g. ``open_clip_pytorch_model.bin`` of laion2b_s34b_b79k for ViT-B-32).

open_clip is an optional dependency (``pip install 'sam-data-engine[clip]'``), imported when an encoder is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sam_core.text_encoder import TextEncoder


class ClipTextEncoder(TextEncoder):
    """open_clip's text tower: B x 77 BPE ids -> B x embed_dim, L2-normalised (as CLIP compares them)."""

    def __init__(self, model_name: str = "ViT-B-32", checkpoint: str | Path | None = None) -> None:
        super().__init__()
        try:
            import open_clip  # optional and heavy (timm, huggingface_hub): only where CLIP is asked for
        except ImportError as err:
            raise ImportError(
                "CLIP's text encoder needs open_clip: pip install 'sam-data-engine[clip]' (open_clip_torch)"
            ) from err
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {model_name!r}; e.g. 'ViT-B-32', 'ViT-B-16', 'ViT-L-14'"
            )
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {checkpoint} is not a file here; nothing is downloaded: point at a local "
                f"open_clip checkpoint of {model_name}"
            )
        clip = open_clip.create_model(
            model_name
        )  # random weights; open_clip fetches nothing without `pretrained`
        if checkpoint is not None:
            open_clip.load_checkpoint(clip, str(checkpoint))
        clip.visual = (
            None  # the image tower is never used: drop its weights (about 88 M numbers for ViT-B-32)
        )
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name, self.checkpoint = model_name, None if checkpoint is None else str(checkpoint)
        self.name = f"CLIP {model_name} text encoder"
        self.context_length = int(clip.context_length)
        self.embed_dim = int(clip.text_projection.shape[1])

    def train(self, mode: bool = True) -> ClipTextEncoder:
        return super().train(False)  # frozen: no dropout, whatever the trainer asks

    def tokenize(self, phrases: Sequence[str]) -> torch.Tensor:
        for phrase in phrases:
            tokens = len(self.tokenizer.encode(phrase)) + 2  # + start and end of text
            if tokens > self.context_length:
                raise self.too_long(phrase, tokens)  # open_clip would cut it off without a word
        return self.tokenizer(list(phrases), self.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens B x context_length -> B x embed_dim, unit length."""
        return self.clip.encode_text(tokens, normalize=True)

    def record(self) -> dict:
        """The weights stay in the user's file: the record names the model and the file."""
        return {"kind": "clip", "config": {"model_name": self.model_name, "checkpoint": self.checkpoint}}
