"""AlignerNet: maps MLLM hidden states into the input space of SD1.5's CLIP text encoder.

Follows `kosmos-g/unilm/models/aligner.py` on the bundled torchscale (`Aligner` lines 11-67, `Aligner_encoder`
lines 70-100). Encoder M:
`encoder_proj` (Linear 2048 -> 768 + learned positions, a padded bidirectional Sub-LN encoder) then 77 learned
queries through a non-causal query decoder (`encoder`) -> (B, 77, 768), the U-Net's cross-attention context.
Decoder N (stage 2 only) reconstructs the MLLM states from those 77 tokens, to keep them discriminative.
All dropouts of AlignerNet are 0 in the official config.

The SDXL variant (`AlignerConfig.context_dim` / `pooled_dim` set; not in the official code) keeps M and N as they
are and adds SDXL's two outputs: `context_proj` maps M's 77 tokens to SDXL's (B, 77, 2048) context, and
`pooled_head` makes SDXL's (B, 1280) pooled vector from that context. N then reads the 2048-wide context, as the
official N reads M's output, through cross-attention key/value projections of that width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import AlignerConfig
from .layers import Attention, LayerStack, Ops, TransformerLayer, factory, key_padding_mask, subln_init_
from .ops import CoreOps


class PositionalEncoder(nn.Module):
    """torchscale Encoder with learned positions (row 2 + t for token t, not pad-aware), padded tokens zeroed
    before the layers and masked as keys, and a final LayerNorm. `in_dim` adds the input projection
    `embed_tokens`; `out_dim` adds `output_projection`."""

    def __init__(self, cfg: AlignerConfig, *, in_dim: int | None = None, out_dim: int | None = None,
                 dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.embed_tokens = ops.Linear(in_dim, cfg.dim, **f) if in_dim else None
        self.embed_positions = ops.Embedding(cfg.max_positions, cfg.dim, **f)
        self.layers = LayerStack(
            TransformerLayer(cfg.dim, cfg.heads, cfg.ffn_dim, ops=ops, **f) for _ in range(cfg.encoder_layers)
        )
        self.layer_norm = ops.LayerNorm(cfg.dim, **f)
        self.output_projection = ops.Linear(cfg.dim, out_dim, **f) if out_dim else None

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, in_dim or dim) [+ pad (B, T) True at pads] -> (B, T, dim or out_dim)."""
        T = x.shape[1]
        if T + 2 > self.embed_positions.weight.shape[0]:
            raise ValueError(f"AlignerNet takes at most {self.embed_positions.weight.shape[0] - 2} tokens, got {T}")
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)  # (B, T, dim)
        positions = torch.arange(2, T + 2, device=x.device)
        x = x + self.embed_positions(positions).to(x.dtype)
        mask = None
        if pad is not None:
            x = x * (~pad)[..., None].to(x.dtype)
            mask = key_padding_mask(pad)
        x = self.layer_norm(self.layers.run(x, attn_mask=mask))
        return self.output_projection(x) if self.output_projection is not None else x


class QueryDecoder(nn.Module):
    """torchscale Decoder in encoder-decoder mode, fed learned queries (no positions, no causal mask)."""

    def __init__(self, cfg: AlignerConfig, *, memory_dim: int | None = None, dtype=None, device=None,
                 ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.layers = LayerStack(
            TransformerLayer(cfg.dim, cfg.heads, cfg.ffn_dim, cross_attention=True, memory_dim=memory_dim, ops=ops,
                             **f)
            for _ in range(cfg.decoder_layers)
        )
        self.layer_norm = ops.LayerNorm(cfg.dim, **f)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor | None = None):
        """queries (B, Q, dim), memory (B, T, memory_dim or dim) -> (B, Q, dim)."""
        mask = key_padding_mask(memory_pad) if memory_pad is not None else None
        return self.layer_norm(self.layers.run(queries, memory=memory, memory_mask=mask))


class PooledHead(nn.Module):
    """SDXL's pooled text vector from the context: (B, 77, context_dim) -> (B, pooled_dim).

    Why this shape: SDXL's pooled vector is OpenCLIP bigG's `text_projection` of the final-LayerNormed state of the
    end-of-text token, i.e. one transformer layer past the penultimate states that make up the context, at the one
    position that (causally) has read the whole prompt. The head mirrors that: one learned query (the end-of-text
    slot; N(0, 1) like AlignerNet's other queries) attends once over the 77 context tokens, then a LayerNorm and a
    bias-free projection (bigG's text_projection has no bias). It reads the context, not the MLLM states, so the
    pooled vector is a function of the conditioning as SDXL's is of the same text-encoder pass: the null condition
    has one too, and a trainer or node that holds a context gets its pooled vector with `KosmosG.pooled(context)`.
    """

    def __init__(self, cfg: AlignerConfig, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.query = nn.Parameter(torch.empty(1, cfg.dim, **f))
        self.attn = Attention(cfg.dim, cfg.heads, kdim=cfg.context_dim, ops=ops, **f)
        self.layer_norm = ops.LayerNorm(cfg.dim, **f)
        self.proj = ops.Linear(cfg.dim, cfg.pooled_dim, bias=False, **f)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.query)
        self.attn.reset_parameters()
        nn.init.xavier_uniform_(self.proj.weight)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        query = self.query.to(context).expand(context.shape[0], -1, -1)  # (B, 1, dim)
        return self.proj(self.layer_norm(self.attn(query, context)))[:, 0]  # (B, pooled_dim)


class AlignerNet(nn.Module):
    """`aligner` of the official checkpoint: encoder M, and decoder N when `cfg.with_decoder`."""

    def __init__(self, cfg: AlignerConfig, mllm_dim: int, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.config = cfg
        self.encoder_proj = PositionalEncoder(cfg, in_dim=mllm_dim, ops=ops, **f)
        self.encoder_query = nn.Parameter(torch.empty(cfg.num_queries, cfg.dim, **f))
        self.encoder = QueryDecoder(cfg, ops=ops, **f)
        if cfg.is_sdxl:
            self.context_proj = ops.Linear(cfg.dim, cfg.context_dim, **f)  # (B, 77, dim) -> (B, 77, 2048)
            self.pooled_head = PooledHead(cfg, ops=ops, **f)  # (B, 77, 2048) -> (B, 1280)
        else:
            self.context_proj = self.pooled_head = None
        if cfg.with_decoder:
            self.decoder_query = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim, **f))
            # N reads M's output: dim wide for SD1.5, the projected context for SDXL.
            memory_dim = cfg.context_dim if cfg.is_sdxl else None
            self.decoder = QueryDecoder(cfg, memory_dim=memory_dim, ops=ops, **f)
            self.decoder_proj = PositionalEncoder(cfg, out_dim=mllm_dim, ops=ops, **f)
        if self.encoder_query.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (stage 2 trains AlignerNet from scratch): queries and position tables
        ~ N(0, 1) (`torch.randn`, nn.Embedding), and torchscale's Sub-LN scaling of every stack, which depends on
        whether it was built as an encoder-decoder part (aligner.py builds encoder_proj, encoder and decoder that
        way; decoder_proj as a plain encoder)."""
        cfg = self.config
        enc, dec = cfg.encoder_layers, cfg.decoder_layers
        nn.init.normal_(self.encoder_query)
        subln_init_(self.encoder_proj, math.sqrt(math.log(3 * dec) * math.log(2 * enc) / 3))
        subln_init_(self.encoder, math.sqrt(math.log(3 * dec)))
        if cfg.is_sdxl:  # not in the official code: torchscale's own choice for projections (xavier, zero bias)
            nn.init.xavier_uniform_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)
            self.pooled_head.reset_parameters()
        if cfg.with_decoder:
            nn.init.normal_(self.decoder_query)
            subln_init_(self.decoder, math.sqrt(math.log(3 * dec)))
            subln_init_(self.decoder_proj, math.sqrt(math.log(2 * enc)))

    def forward(self, hidden: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """M: MLLM states (B, T, mllm_dim), pad (B, T) -> conditioning (B, 77, output_dim): dim for SD1.5, the
        projected context_dim (2048) for SDXL."""
        h = self.encoder_proj(hidden, pad)  # (B, T, dim), pads zeroed
        queries = self.encoder_query.to(h).expand(h.shape[0], -1, -1)  # (B, 77, dim)
        z = self.encoder(queries, h, pad)  # (B, 77, dim)
        return self.context_proj(z) if self.context_proj is not None else z

    def pool(self, context: torch.Tensor) -> torch.Tensor:
        """SDXL only: context (B, 77, context_dim) -> pooled vector (B, pooled_dim)."""
        if self.pooled_head is None:
            raise RuntimeError("this AlignerNet makes SD1.5 conditioning, which has no pooled vector; only an SDXL "
                               "AlignerNet (AlignerConfig with context_dim and pooled_dim) has a pooled head")
        return self.pooled_head(context)

    def reconstruct(self, z: torch.Tensor, length: int) -> torch.Tensor:
        """N: conditioning (B, 77, output_dim) -> reconstructed MLLM states (B, length, mllm_dim). Stage 2 only."""
        if not self.config.with_decoder:
            raise RuntimeError("this AlignerNet has no decoder N (build it with AlignerConfig(with_decoder=True))")
        queries = self.decoder_query[:length].to(z).expand(z.shape[0], -1, -1)  # (B, T, dim)
        return self.decoder_proj(self.decoder(queries, z))
