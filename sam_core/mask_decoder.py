"""The mask decoder: output tokens (1 IoU token + 4 mask tokens) and prompt tokens go through the two-way
transformer; the image tokens are upscaled 4x and dotted with per-token hypernetwork weights.

Outputs low-res mask logits B x M x 4h x 4w and predicted IoU B x M; M = 3 with multimask_output (tokens 1-3)
or 1 without (token 0). `prepare` + `predict_masks` split the prompt-independent work out for interactive use.

A decoder built with ``presence=True`` (for text prompts) also holds a presence token and head, as SAM 3's: one
more output token whose state after the transformer gives one logit per prompt, "is what the phrase names in
this image at all". Asked for (``presence=True`` in a call), the token joins the output tokens; not asked for,
the decoder runs exactly as Meta's. Recognition ("is there a striped ellipse?") is then the presence head's job
and localisation the mask tokens': a mask token need not shrink its mask to say that nothing matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP, LayerNorm2d
from .transformer import TransformerContext, TwoWayTransformer


@dataclass
class DecoderContext:
    """Everything about one image embedding that no prompt changes (see MaskDecoder.prepare)."""

    image_embeddings: Tensor  # 1 x C x h x w, as produced by the image encoder
    image_pe: Tensor  # 1 x C x h x w
    positions: tuple[list[Tensor], Tensor]  # TwoWayTransformer.position_terms(image_pe)
    no_mask: TransformerContext  # the transformer context for prompts without a mask prompt


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        presence: bool = False,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        # Kept as the official Sequential of two 2x2/stride-2 transposed convs so checkpoint names match;
        # `upscale` applies the same weights as per-token matmuls (a 2x2/stride-2 deconv never overlaps).
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        # Absent unless asked for, so Meta's checkpoints load as they are (see sam_core.checkpoint).
        self.presence_token = nn.Embedding(1, transformer_dim) if presence else None
        self.presence_head = MLP(transformer_dim, transformer_dim, 1, 3) if presence else None

    # --- prompt-independent work --------------------------------------------------------------------------
    def prepare(self, image_embeddings: Tensor, image_pe: Tensor, no_mask_embed: Tensor) -> DecoderContext:
        """image_embeddings 1 x C x h x w, image_pe 1 x C x h x w, no_mask_embed 1 x C (the prompt encoder's
        dense embedding for "no mask") -> a context reused by every predict_masks call on this image."""
        positions = self.transformer.position_terms(image_pe)
        src = image_embeddings + no_mask_embed.reshape(1, -1, 1, 1)
        no_mask = self.transformer.prepare(src, image_pe, positions)
        return DecoderContext(image_embeddings, image_pe, positions, no_mask)

    # --- per-prompt work ----------------------------------------------------------------------------------
    def predict_masks(
        self,
        context: DecoderContext,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None = None,
        multimask_output: bool = True,
        best_only: bool = False,
        presence: bool = False,
    ) -> tuple[Tensor, ...]:
        """sparse B x T x C; dense B x C x h x w or None (no mask prompt: the cached context is used).

        best_only keeps, per prompt, the output with the highest predicted IoU (M = 1) and computes only its
        mask. Returns (low-res logits B x M x 4h x 4w, predicted IoU B x M), and with presence=True also the
        presence logits B.
        """
        if dense_prompt_embeddings is None:
            tctx = context.no_mask
        else:
            src = context.image_embeddings + dense_prompt_embeddings
            # Per-prompt image tokens: the folded first layer is cheaper than projecting them.
            tctx = self.transformer.prepare(
                src, context.image_pe, context.positions, project_first_layer=False
            )
        outputs = self._decode(
            tctx, sparse_prompt_embeddings, multimask_output, best_only, context.image_pe.shape, presence
        )
        return outputs if presence else outputs[:2]

    def _decode(
        self,
        tctx: TransformerContext,
        sparse: Tensor,
        multimask_output: bool,
        best_only: bool,
        grid_shape: torch.Size,
        presence: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> (low-res logits B x M x 4h x 4w, predicted IoU B x M, presence logits B or None)."""
        batch = sparse.shape[0]
        output = [self.iou_token.weight, self.mask_tokens.weight]
        if presence:
            if self.presence_token is None:
                raise ValueError(
                    "this mask decoder has no presence head (built without a text path, as Meta's checkpoints "
                    "are); build the model with text_dim > 0"
                )
            output.append(self.presence_token.weight)
        output_tokens = torch.cat(output, dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        hs, keys = self.transformer.run(tctx, tokens)
        presence_logits = self.presence_head(hs[:, 1 + self.num_mask_tokens])[:, 0] if presence else None
        iou_pred = self.iou_prediction_head(hs[:, 0])
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        iou_pred, hyper_in = iou_pred[:, chosen], hyper_in[:, chosen]
        if best_only:
            best = iou_pred.argmax(dim=1, keepdim=True)
            iou_pred = iou_pred.gather(1, best)
            hyper_in = hyper_in.gather(1, best[:, :, None].expand(-1, -1, hyper_in.shape[-1]))
        h, w = grid_shape[-2:]
        if keys.shape[0] != batch:
            keys = keys.expand(batch, -1, -1)
        return self.mask_logits(self.upscale(keys), hyper_in, (h, w)), iou_pred, presence_logits

    def upscale(self, keys: Tensor) -> Tensor:
        """Image tokens B x (h*w) x C -> upscaled features B x (h*w) x 16 x C/8.

        Axis 2 enumerates the 4 x 4 output pixels of each token as (dy1, dx1, dy2, dx2), see mask_logits.
        """
        deconv1, norm, _, deconv2, _ = self.output_upscaling
        b, n, c = keys.shape
        c1, c2 = deconv1.out_channels, deconv2.out_channels
        # ConvTranspose2d weight is in x out x 2 x 2: as a matmul its columns are ordered (dy, dx, out).
        w1 = deconv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
        x = torch.addmm(deconv1.bias.repeat(4), keys.reshape(b * n, c), w1).view(b, n, 4, c1)
        x = F.gelu(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        w2 = deconv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = torch.addmm(deconv2.bias.repeat(4), x.view(b * n * 4, c1), w2)
        return F.gelu(x).view(b, n, 16, c2)

    @staticmethod
    def mask_logits(features: Tensor, hyper_in: Tensor, grid: tuple[int, int]) -> Tensor:
        """features B x (h*w) x 16 x C8 (from upscale), hyper_in B x M x C8 -> mask logits B x M x 4h x 4w."""
        b, n, _, c8 = features.shape
        m = hyper_in.shape[1]
        h, w = grid
        logits = torch.matmul(features.view(b, n * 16, c8), hyper_in.transpose(1, 2))  # B x 16N x M
        # Token (y, x), first deconv offset (dy1, dx1), second (dy2, dx2) -> row 4y + 2dy1 + dy2.
        logits = logits.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(b, m, 4 * h, 4 * w)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        presence: bool = False,
    ) -> tuple[Tensor, ...]:
        """Reference signature. image_embeddings 1 x C x h x w (shared by all prompts) or B x C x h x w (one
        per prompt), image_pe 1 x C x h x w, sparse B x T x C, dense B x C x h x w
        -> (low-res logits B x M x 4h x 4w, predicted IoU B x M), and with presence=True also the presence
        logits B. Differentiable."""
        dense = dense_prompt_embeddings
        if dense.dim() == 4 and dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]  # the broadcast "no mask" embedding: keep one copy instead of B
        src = image_embeddings + dense
        # Projecting the image tokens once pays off only when they are shared by several prompts.
        shared = src.shape[0] < sparse_prompt_embeddings.shape[0]
        tctx = self.transformer.prepare(src, image_pe, project_first_layer=shared)
        outputs = self._decode(
            tctx, sparse_prompt_embeddings, multimask_output, False, image_pe.shape, presence
        )
        return outputs if presence else outputs[:2]
