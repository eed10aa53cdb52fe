"""The two-way transformer of the mask decoder: prompt tokens and image tokens attend to each other.

Shapes: image tokens Bk x N x C (N = h * w, Bk = 1 when all prompts share one image embedding), prompt tokens
B x T x C. Everything that depends only on the image is split out into `prepare` so an interactive session does
it once per image (TransformerContext); `run` then does the per-prompt work, with the shared image tokens
broadcast across prompts instead of copied per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by downsample_rate."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal dim {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """B x N x internal_dim -> B x heads x N x head_dim (a view)."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """B x heads x N x head_dim -> B x N x internal_dim."""
        b, nh, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, nh * d)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Head-split q (Bq x heads x Nq x d), k/v (Bk x heads x Nk x d) -> Bmax x Nq x embedding_dim.

        Batch 1 on either side broadcasts against batch B on the other without copying the shared side.
        """
        bq, bk = q.shape[0], k.shape[0]
        if bq == bk:
            out = F.scaled_dot_product_attention(q, k, v)
        elif bk == 1:
            # Every prompt attends to the same keys: fold the prompts into the query axis, one call.
            nh, nq, d = q.shape[1:]
            folded = q.transpose(0, 1).reshape(1, nh, bq * nq, d)
            out = F.scaled_dot_product_attention(folded, k, v)
            out = out.view(nh, bq, nq, d).transpose(0, 1)
        else:
            # Shared queries (the image) against per-prompt keys (a handful of tokens): broadcast matmuls.
            scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            out = torch.matmul(scores.softmax(dim=-1), v)
        return self.out_proj(self.merge_heads(out))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q B x Nq x C, k and v B x Nk x C -> B x Nq x C."""
        return self.attend(
            self.split_heads(self.q_proj(q)),
            self.split_heads(self.k_proj(k)),
            self.split_heads(self.v_proj(v)),
        )


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens -> image, token MLP, image -> tokens (each followed by a LayerNorm)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_weights(self) -> tuple[Tensor, Tensor]:
        """The three projections applied to the image tokens, stacked: weight 3C' x C and bias 3C'.

        Order: token->image keys, token->image values, image->token queries.
        """
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        weight = torch.cat([t2i.k_proj.weight, t2i.v_proj.weight, i2t.q_proj.weight])
        bias = torch.cat([t2i.k_proj.bias, t2i.v_proj.bias, i2t.q_proj.bias])
        return weight, bias

    def position_terms(self, key_pe: Tensor) -> Tensor:
        """What the image position encoding (1 x N x C) contributes to the three image projections, biases
        included: 1 x N x 3C'. Projections are linear, so (x + pe) W + b = x W + (pe W + b)."""
        weight, bias = self.image_weights()
        c = self.cross_attn_token_to_image.internal_dim
        pe_part = F.linear(key_pe, weight, bias)
        # Values are projected without the position encoding: keep only their bias.
        return torch.cat(
            [pe_part[..., :c], bias[c : 2 * c].expand_as(pe_part[..., :c]), pe_part[..., 2 * c :]], -1
        )

    def project_image(self, keys: Tensor, position_terms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Image tokens Bk x N x C -> head-split (t2i keys, t2i values, i2t queries), each Bk x heads x N x d."""
        weight, _ = self.image_weights()
        projected = torch.matmul(keys, weight.t()) + position_terms
        c = self.cross_attn_token_to_image.internal_dim
        k, v, q = projected.split(c, dim=-1)
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return t2i.split_heads(k), t2i.split_heads(v), i2t.split_heads(q)

    def forward_projected(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        image_kvq: tuple[Tensor, Tensor, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """The block given the image-side projections (from project_image): returns (queries B x T x C,
        keys B x N x C)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        image_k, image_v, image_q = image_kvq
        t2i = self.cross_attn_token_to_image
        q = t2i.split_heads(t2i.q_proj(queries + query_pe))
        queries = self.norm2(queries + t2i.attend(q, image_k, image_v))
        queries = self.norm3(queries + self.mlp(queries))

        i2t = self.cross_attn_image_to_token
        token_k = i2t.split_heads(i2t.k_proj(queries + query_pe))
        token_v = i2t.split_heads(i2t.v_proj(queries))
        keys = self.norm4(keys + i2t.attend(image_q, token_k, token_v))
        return queries, keys

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """queries B x T x C, keys B x N x C, query_pe like queries, key_pe like keys (or batch 1)."""
        terms = self.position_terms(key_pe[:1])
        return self.forward_projected(queries, keys, query_pe, self.project_image(keys, terms))


@dataclass
class TransformerContext:
    """Prompt-independent work on one set of image tokens (see TwoWayTransformer.prepare)."""

    keys: Tensor  # Bk x N x C image tokens (embedding + dense prompt)
    position_terms: list[Tensor]  # per layer 1 x N x 3C'
    final_position_terms: Tensor  # 1 x N x C' for the final attention's keys
    first_layer_kvq: tuple[Tensor, Tensor, Tensor]  # layer-1 image projections, Bk x heads x N x d


class TwoWayTransformer(nn.Module):
    """depth TwoWayAttentionBlocks, then a last token -> image attention and LayerNorm on the tokens."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def position_terms(self, image_pe: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per-layer contributions of the position encoding (1 x C x h x w) to the image projections."""
        key_pe = image_pe.flatten(2).transpose(1, 2)
        final = self.final_attn_token_to_image
        return [layer.position_terms(key_pe) for layer in self.layers], final.k_proj(key_pe)

    def prepare(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        positions: tuple[list[Tensor], Tensor] | None = None,
    ) -> TransformerContext:
        """image_embedding Bk x C x h x w (dense prompt already added), image_pe 1 x C x h x w.

        positions: a previous position_terms(image_pe) result to reuse (it depends on the weights only).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        terms, final_terms = positions if positions is not None else self.position_terms(image_pe)
        first = self.layers[0].project_image(keys, terms[0]) if self.depth else (keys, keys, keys)
        return TransformerContext(keys, terms, final_terms, first)

    def run(self, context: TransformerContext, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """point_embedding B x T x C -> (queries B x T x C, keys max(B, Bk) x N x C)."""
        queries, keys = point_embedding, context.keys
        for i, layer in enumerate(self.layers):
            kvq = context.first_layer_kvq if i == 0 else layer.project_image(keys, context.position_terms[i])
            queries, keys = layer.forward_projected(queries, keys, point_embedding, kvq)
        final = self.final_attn_token_to_image
        q = final.split_heads(final.q_proj(queries + point_embedding))
        k = final.split_heads(F.linear(keys, final.k_proj.weight) + context.final_position_terms)
        v = final.split_heads(final.v_proj(keys))
        queries = self.norm_final_attn(queries + final.attend(q, k, v))
        return queries, keys

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """image_embedding Bk x C x h x w, image_pe 1 x C x h x w, point_embedding B x T x C
        -> (processed tokens B x T x C, processed image tokens B x N x C)."""
        return self.run(self.prepare(image_embedding, image_pe), point_embedding)
