"""The multimodal LLM of KOSMOS-G: a causal Sub-LN transformer over text tokens and image embeddings.

Follows `kosmos-g/unilm/models/gpt.py` (LMDecoder) on the bundled torchscale Decoder (sizes: `kosmos-g/unilm/models/kosmosg.py:611-622`):
image embeddings are written into their token slots *before* the sqrt(dim) embedding scale, fairseq sinusoidal
positions (pad-aware, first token at position 2) are added, then pre-LN + Sub-LN layers with exact GELU, plain causal
attention (no padding mask: with right padding causality already hides later pads), a final LayerNorm, and an output
head tied to the token embedding. xPos/SoPE is built by the official code but never applied, so it is absent here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MLLMConfig
from .layers import LayerStack, Ops, TransformerLayer, factory, subln_init_
from .ops import CoreOps


def sinusoidal_positions(tokens: torch.Tensor, dim: int, pad_id: int) -> torch.Tensor:
    """fairseq SinusoidalPositionalEmbedding: (B, T) ids -> (B, T, dim) float32.

    Position of a token = pad_id + number of non-pad tokens up to it; pads get the zero row. Each row is
    [sin(p * inv) | cos(p * inv)] with inv_i = exp(-ln(10000) * i / (half - 1)) (halves concatenated).
    """
    not_pad = tokens.ne(pad_id)
    positions = torch.cumsum(not_pad, dim=1) * not_pad + pad_id  # (B, T)
    half = dim // 2
    inv = torch.exp(torch.arange(half, dtype=torch.float32, device=tokens.device) * -(math.log(10000.0) / (half - 1)))
    angles = positions.to(torch.float32)[..., None] * inv  # (B, T, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill(~not_pad[..., None], 0.0)


class MLLM(nn.Module):
    """`gpt_model.decoder` of the official checkpoint."""

    def __init__(self, cfg: MLLMConfig, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.config = cfg
        self.embed_scale = math.sqrt(cfg.dim)
        self.embed_tokens = ops.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id, **f)
        self.layers = LayerStack(
            TransformerLayer(cfg.dim, cfg.heads, cfg.ffn_dim, dropout=cfg.dropout,
                             attention_dropout=cfg.attention_dropout, ops=ops, **f)
            for _ in range(cfg.layers)
        )
        self.layer_norm = ops.LayerNorm(cfg.dim, **f)
        if self.embed_tokens.weight.device.type != "meta":
            nn.init.normal_(self.embed_tokens.weight, std=cfg.dim**-0.5)  # fairseq's embedding init
            with torch.no_grad():
                self.embed_tokens.weight[cfg.pad_id].zero_()
            if cfg.layers:
                subln_init_(self.layers, math.sqrt(math.log(2 * cfg.layers)))  # torchscale Decoder, decoder-only

    def embed(self, tokens: torch.Tensor, image_embeds: torch.Tensor | None = None,
              image_mask: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, T) ids [+ (N, Q, D) image embeddings for the True slots of `image_mask` (B, T)] -> (B, T, D)."""
        x = self.embed_tokens(tokens)  # (B, T, D)
        if dtype is not None:
            x = x.to(dtype)
        if image_mask is not None and image_embeds is not None and image_embeds.numel():
            slots = int(image_mask.sum())
            flat = image_embeds.reshape(-1, x.shape[-1])  # (N*Q, D), ordered by sample then occurrence
            if flat.shape[0] != slots:
                raise ValueError(f"{flat.shape[0]} image embeddings for {slots} image slots in the tokens")
            x = x.masked_scatter(image_mask[..., None], flat.to(x.dtype))
        x = x * self.embed_scale  # image features are scaled too, as in the official model
        x = x + sinusoidal_positions(tokens, x.shape[-1], self.config.pad_id).to(x.dtype)
        return F.dropout(x, self.config.dropout, self.training)

    def forward(self, tokens: torch.Tensor, image_embeds: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Returns the final-LayerNorm hidden states (B, T, D), the input of AlignerNet."""
        if tokens.shape[1] > self.config.max_positions:
            raise ValueError(f"the sequence has {tokens.shape[1]} tokens; the model takes at most "
                             f"{self.config.max_positions}")
        x = self.embed(tokens, image_embeds, image_mask, dtype)
        x = self.layers.run(x, is_causal=True)
        return self.layer_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, vocab) through the head tied to the token embedding."""
        return F.linear(hidden, self.embed_tokens.weight.to(hidden.dtype))
