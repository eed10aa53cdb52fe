"""The prompt encoder: points and box corners become sparse tokens (random-Fourier position + learned type
embedding), a low-res mask prompt becomes a dense map at the image-embedding resolution, and (when built with
``text_dim``) a phrase's text embedding becomes ``text_tokens`` more sparse tokens.

The text path is the paper's (section 7.5: a CLIP text embedding given to the prompt encoder as a sparse
prompt), through a small projection of our own. A prompt encoder built without it has exactly Meta's parameters
and outputs; with it, every text-free prompt still gives the same tokens as without it (the text tokens are only
appended when a text embedding is given).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .text_recognition import MaskRecognizer


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature encoding of 2-D positions: (x, y) in [0, 1] -> 2 * num_pos_feats channels."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords ... x 2 normalised to [0, 1] -> ... x (2 * num_pos_feats), [sin | cos]."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an h x w grid: C x h x w."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h x w x (x, y)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords B x N x 2 as (x, y) in pixels of an image of size (H, W) -> B x N x C."""
        h, w = image_size
        scale = coords.new_tensor([1.0 / w, 1.0 / h], dtype=torch.float32)
        return self._pe_encoding(coords.to(torch.float32) * scale)


class TextProjection(nn.Module):
    """A phrase's text embedding B x D (any text encoder's output, see sam_core.text_encoder) -> B x T x C sparse
    prompt tokens (C = the prompt embedding size, 256).

    LayerNorm first because text encoders differ wildly in output scale (CLIP's is L2-normalised, ours is not);
    then a two-layer MLP to T tokens. T > 1 gives the decoder's token-to-image attention several queries for one
    phrase ("red" and "ellipse" can look at different evidence)."""

    def __init__(self, text_dim: int, embed_dim: int, num_tokens: int) -> None:
        super().__init__()
        if text_dim < 1 or num_tokens < 1:
            raise ValueError(f"text_dim and text_tokens must be >= 1, got {text_dim} and {num_tokens}")
        self.text_dim, self.embed_dim, self.num_tokens = text_dim, embed_dim, num_tokens
        self.norm = nn.LayerNorm(text_dim)
        self.mlp = MLP(text_dim, embed_dim, embed_dim * num_tokens, 2)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.text_dim:
            raise ValueError(
                f"text embeddings must be B x {self.text_dim}, got {tuple(text_embeddings.shape)}: "
                "is the text encoder the one this model's text projection was trained with?"
            )
        tokens = self.mlp(self.norm(text_embeddings.to(torch.float32)))
        return tokens.view(-1, self.num_tokens, self.embed_dim)


class PromptEncoder(nn.Module):
    """Embeds points (B x N x 2 + labels B x N), boxes (B x 4, XYXY), masks (B x 1 x 4h x 4w) and, when built
    with text_dim > 0, text embeddings (B x text_dim).

    Point labels: 1 foreground, 0 background, -1 padding ("not a point"). Coordinates are in the frame of the
    resized, padded encoder input (input_image_size).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_dim: int = 0,
        text_tokens: int = 2,
        text_recognizer: int = 0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Type embeddings: 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        # Absent (no parameters, no state-dict entries) unless asked for: Meta's checkpoints load as they are.
        self.text_projection = TextProjection(text_dim, embed_dim, text_tokens) if text_dim > 0 else None
        # Which mask a phrase names (sam_core.text_recognition), from what the masks look like; text models only.
        self.text_recognizer = (
            MaskRecognizer(text_dim, text_recognizer) if text_dim > 0 and text_recognizer > 0 else None
        )

    @property
    def text_dim(self) -> int:
        """The size of the text embeddings this encoder takes; 0 when it has no text path."""
        return 0 if self.text_projection is None else self.text_projection.text_dim

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every image-embedding cell: 1 x embed_dim x h x w."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """coords B x N x 2 (input-frame pixels), labels B x N -> B x (N + pad) x embed_dim.

        pad appends the (0, 0) / label -1 point the official model was trained with when no box is given.
        """
        coords = coords.to(torch.float32) + 0.5  # pixel centres
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        not_a_point = labels == -1
        pe = torch.where(not_a_point, self.not_a_point_embed.weight, pe)
        pe = pe + torch.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        pe = pe + torch.where(labels == 1, self.point_embeddings[1].weight, 0.0)
        return pe

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes B x 4 (x0, y0, x1, y1 in input-frame pixels) -> B x 2 x embed_dim (one token per corner)."""
        corners = boxes.to(torch.float32).reshape(-1, 2, 2) + 0.5
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return pe + corner_types

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """masks B x 1 x 4h x 4w (logits) -> B x embed_dim x h x w."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self, batch: int = 1) -> torch.Tensor:
        """The dense embedding used when no mask prompt is given: batch x embed_dim x h x w (a broadcast view)."""
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def embed_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """text_embeddings B x text_dim -> B x text_tokens x embed_dim. ValueError without a text path."""
        if self.text_projection is None:
            raise ValueError(
                "this model has no text path (built with text_dim=0, as Meta's checkpoints are); build it with "
                "text_dim set to the text encoder's embedding size and train the projection (scripts/train_text.py)"
            )
        return self.text_projection(text_embeddings)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sparse B x N x embed_dim, dense B x embed_dim x h x w). B comes from the first prompt given.

        text: B x text_dim text embeddings; their tokens come after the point and box tokens. Without text the
        result is exactly that of a prompt encoder without a text path."""
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        elif text is not None:
            batch = text.shape[0]
        else:
            batch = 1
        device = self.no_mask_embed.weight.device
        parts = [torch.empty((batch, 0, self.embed_dim), device=device)]
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        if text is not None:
            parts.append(self.embed_text(text.to(device)))
        sparse = torch.cat(parts, dim=1)
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(batch)
        return sparse, dense
