"""The two-way transformer of the mask decoder: prompt tokens and image tokens attend to each other.

Shapes: image tokens Bk x N x C (N = h * w, Bk = 1 when all prompts share one image embedding), prompt tokens
B x T x C with T small (about 7). Everything that depends only on the image is split out into `prepare`, so an
interactive session does it once per image (TransformerContext); `run` does the per-prompt work, with the
shared image tokens broadcast across prompts instead of copied per prompt.

Cross-attention between T tokens and N image tokens is computed with the projections folded onto the token
side: q . (x Wk + bk) = (q Wk) . x + q . bk, and sum_n a_n (x_n Wv + bv) = (sum_n a_n x_n) Wv + bv (the
weights a sum to 1). So the N x C image tokens only ever meet (heads * T) x C matrices instead of being
projected by C x C' weights: about 4x fewer multiply-adds on the image side. The result is the same function.
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
        if min(q.shape[2], k.shape[2]) <= 64:
            # A few prompt tokens against thousands of image tokens (either way round): the score matrix is
            # small, and plain broadcasting matmuls beat the flash kernel, whose blocking suits long sequences.
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            out = torch.matmul(scores.softmax(dim=-1), v)
        elif bq == bk:
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


def _head_weights(linear: nn.Linear, num_heads: int) -> Tensor:
    """A projection's weight C' x C as heads x d x C (row block h maps C to head h)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.view(num_heads, out_dim // num_heads, in_dim)


def _position_heads(attn: Attention, linear: nn.Linear, key_pe: Tensor) -> Tensor:
    """(pe W + b) for the N image positions, head-split: 1 x heads x N x d."""
    return attn.split_heads(linear(key_pe))


def tokens_to_image(
    attn: Attention,
    tokens: Tensor,
    image: Tensor,
    position_k: Tensor,
    projected_kv: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Prompt tokens (B x T x C, position already added) attend to image tokens (Bk x N x C; Bk = 1 or B).

    position_k: 1 x heads x N x d, the position encoding's contribution to the keys, k bias included.
    projected_kv: precomputed head-split keys and values of the image (Bk x heads x N x d), else folded.
    Returns B x T x C.
    """
    nh = attn.num_heads
    q = attn.split_heads(attn.q_proj(tokens)) * (attn.internal_dim // nh) ** -0.5  # B x h x T x d
    b, _, t, _ = q.shape
    if projected_kv is not None:
        k, v = projected_kv
        weights = torch.matmul(q, k.transpose(-1, -2)).softmax(dim=-1)
        out = torch.matmul(weights, v)
    else:
        n, c = image.shape[1:]
        q_in_image_space = torch.matmul(q, _head_weights(attn.k_proj, nh))  # B x h x T x C
        scores = torch.matmul(q_in_image_space.view(b, nh * t, c), image.transpose(1, 2)).view(b, nh, t, n)
        scores = scores + torch.matmul(q, position_k.transpose(-1, -2))
        weights = scores.softmax(dim=-1)
        pooled = torch.matmul(weights.view(b, nh * t, n), image).view(b, nh, t, c)  # weighted image tokens
        out = torch.matmul(pooled, _head_weights(attn.v_proj, nh).transpose(1, 2))
        out = out + attn.v_proj.bias.view(nh, 1, -1)
    return attn.out_proj(attn.merge_heads(out))


def image_to_tokens(
    attn: Attention,
    tokens_k: Tensor,
    tokens_v: Tensor,
    image: Tensor,
    position_q: Tensor,
    projected_q: Tensor | None = None,
) -> Tensor:
    """Image tokens (Bk x N x C) attend to prompt tokens (keys from tokens_k, values from tokens_v, B x T x C).

    position_q: 1 x heads x N x d, the position encoding's contribution to the queries, q bias included.
    projected_q: precomputed head-split image queries (Bk x heads x N x d), else folded.
    Returns max(B, Bk) x N x C. Scores are kept as B x heads x T x N so the softmax over the T tokens runs
    along a strided axis (fast) rather than over rows of length T (slow).
    """
    nh = attn.num_heads
    k = attn.split_heads(attn.k_proj(tokens_k)) * (attn.internal_dim // nh) ** -0.5  # B x h x T x d
    v = attn.split_heads(attn.v_proj(tokens_v))
    b, _, t, _ = k.shape
    n, c = image.shape[1:]
    if projected_q is not None:
        scores = torch.matmul(k, projected_q.transpose(-1, -2))  # B x h x T x N
    else:
        k_in_image_space = torch.matmul(k, _head_weights(attn.q_proj, nh))  # B x h x T x C
        scores = torch.matmul(k_in_image_space.view(b, nh * t, c), image.transpose(1, 2)).view(b, nh, t, n)
        scores = scores + torch.matmul(k, position_q.transpose(-1, -2))
    weights = scores.softmax(dim=2)
    batch = weights.shape[0]
    # out_proj folded into the values: sum over heads and tokens of weight * (v_h Wo_h).
    values_out = torch.matmul(
        v, attn.out_proj.weight.t().reshape(nh, -1, attn.embedding_dim)
    )  # B x h x T x C
    out = torch.matmul(weights.view(batch, nh * t, n).transpose(1, 2), values_out.view(b, nh * t, -1))
    return out + attn.out_proj.bias


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

    def position_terms(self, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """key_pe 1 x N x C -> (keys term of token->image, queries term of image->token), 1 x heads x N x d."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return _position_heads(t2i, t2i.k_proj, key_pe), _position_heads(i2t, i2t.q_proj, key_pe)

    def project_image(self, keys: Tensor, terms: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Image tokens Bk x N x C -> head-split (t2i keys, t2i values, i2t queries), Bk x heads x N x d.
        Worth it only when the same image tokens serve many prompts (the first layer of a cached image)."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        k = t2i.split_heads(F.linear(keys, t2i.k_proj.weight)) + terms[0]
        v = t2i.split_heads(t2i.v_proj(keys))
        q = i2t.split_heads(F.linear(keys, i2t.q_proj.weight)) + terms[1]
        return k, v, q

    def forward_cached(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        terms: tuple[Tensor, Tensor],
        projected: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """queries B x T x C, keys Bk x N x C, query_pe B x T x C, terms from position_terms, projected from
        project_image (or None) -> (queries B x T x C, keys max(B, Bk) x N x C)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        kv = None if projected is None else projected[:2]
        attn_out = tokens_to_image(self.cross_attn_token_to_image, queries + query_pe, keys, terms[0], kv)
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        q_img = None if projected is None else projected[2]
        attn_out = image_to_tokens(
            self.cross_attn_image_to_token, queries + query_pe, queries, keys, terms[1], q_img
        )
        keys = self.norm4(keys + attn_out)
        return queries, keys

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Reference signature: queries B x T x C, keys B x N x C, query_pe like queries, key_pe 1 x N x C."""
        return self.forward_cached(queries, keys, query_pe, self.position_terms(key_pe[:1]))


@dataclass
class TransformerContext:
    """Prompt-independent work on one set of image tokens (see TwoWayTransformer.prepare)."""

    keys: Tensor  # Bk x N x C image tokens (embedding + dense prompt)
    position_terms: list[tuple[Tensor, Tensor]]  # per layer, from TwoWayAttentionBlock.position_terms
    final_position_term: Tensor  # 1 x heads x N x d, keys term of the final attention
    first_layer_projections: tuple[Tensor, Tensor, Tensor] | None  # layer-1 project_image(keys)


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

    def position_terms(self, image_pe: Tensor) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """What the position encoding (1 x C x h x w) adds to every image-side projection; it depends on the
        weights only, so it is computed once per image (or once per model)."""
        key_pe = image_pe.flatten(2).transpose(1, 2)
        final = self.final_attn_token_to_image
        return [layer.position_terms(key_pe) for layer in self.layers], _position_heads(
            final, final.k_proj, key_pe
        )

    def prepare(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        positions: tuple[list[tuple[Tensor, Tensor]], Tensor] | None = None,
        project_first_layer: bool = True,
    ) -> TransformerContext:
        """image_embedding Bk x C x h x w (dense prompt already added), image_pe 1 x C x h x w.

        positions: a previous position_terms(image_pe) to reuse. project_first_layer precomputes the first
        layer's image projections, which pays off when the context serves several prompts.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        terms, final_term = positions if positions is not None else self.position_terms(image_pe)
        first = None
        if project_first_layer and self.depth:
            first = self.layers[0].project_image(keys, terms[0])
        return TransformerContext(keys, terms, final_term, first)

    def run(self, context: TransformerContext, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """point_embedding B x T x C -> (queries B x T x C, keys max(B, Bk) x N x C)."""
        queries, keys = point_embedding, context.keys
        for i, layer in enumerate(self.layers):
            projected = context.first_layer_projections if i == 0 else None
            queries, keys = layer.forward_cached(
                queries, keys, point_embedding, context.position_terms[i], projected
            )
        final = self.final_attn_token_to_image
        attn_out = tokens_to_image(final, queries + point_embedding, keys, context.final_position_term)
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """image_embedding Bk x C x h x w, image_pe 1 x C x h x w, point_embedding B x T x C
        -> (processed tokens B x T x C, processed image tokens B x N x C)."""
        context = self.prepare(image_embedding, image_pe, project_first_layer=False)
        return self.run(context, point_embedding)
