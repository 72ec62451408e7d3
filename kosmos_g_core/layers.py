"""Transformer building blocks shared by the MLLM and AlignerNet.

They follow the bundled torchscale of microsoft/unilm `kosmos-g/` (`torchscale/component/multihead_attention.py`,
`feedforward_network.py`, `architecture/{encoder,decoder}.py`) with `--subln` (MAGNETO Sub-LN): pre-LN residual
blocks, an extra LayerNorm on the self-attention output before `out_proj` (`inner_attn_ln`, never on cross-attention)
and one on the FFN's hidden layer before `fc2` (`ffn_layernorm`). Attribute names are the official ones so official
state dicts load key for key. Every constructor takes `dtype`, `device` and an `ops` namespace (`Linear`,
`LayerNorm`, `Embedding`, `Conv2d`; default `ops.CoreOps`, torch.nn's with a CPU fast path) so ComfyUI can pass its
own casting layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ops import CoreOps

Ops = Any  # a namespace with Linear, LayerNorm, Embedding, Conv2d (CoreOps, torch.nn or comfy.ops.*)


def factory(dtype: torch.dtype | None, device: torch.device | str | None) -> dict[str, Any]:
    return {"dtype": dtype, "device": device}


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections (scaled by 1/sqrt(head_dim), as fairseq/torchscale).

    `subln=True` adds `inner_attn_ln` over the heads' concatenated output, as torchscale does for self-attention.
    """

    def __init__(self, dim: int, heads: int, *, kdim: int | None = None, subln: bool = False, dropout: float = 0.0,
                 dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        kdim = kdim or dim
        f = factory(dtype, device)
        self.heads = heads
        self.dropout = dropout
        self.k_proj = ops.Linear(kdim, dim, **f)
        self.v_proj = ops.Linear(kdim, dim, **f)
        self.q_proj = ops.Linear(dim, dim, **f)
        self.out_proj = ops.Linear(dim, dim, **f)
        self.inner_attn_ln = ops.LayerNorm(dim, **f) if subln else None
        if self.q_proj.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torchscale's init: xavier-uniform q/k/v with gain 1/sqrt(2), xavier-uniform out_proj with zero bias."""
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        context = x if context is None else context
        B, Tq, D = x.shape
        Tk = context.shape[1]
        h = self.heads
        q = self.q_proj(x).view(B, Tq, h, D // h).transpose(1, 2)  # (B, h, Tq, hd)
        k = self.k_proj(context).view(B, Tk, h, D // h).transpose(1, 2)  # (B, h, Tk, hd)
        v = self.v_proj(context).view(B, Tk, h, D // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, Tq, D)  # (B, Tq, D)
        if self.inner_attn_ln is not None:
            out = self.inner_attn_ln(out)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """fc1 -> exact GELU (in fp32, as torchscale) -> ffn_layernorm (Sub-LN) -> fc2."""

    def __init__(self, dim: int, ffn_dim: int, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.fc1 = ops.Linear(dim, ffn_dim, **f)
        self.fc2 = ops.Linear(ffn_dim, dim, **f)
        self.ffn_layernorm = ops.LayerNorm(ffn_dim, **f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        # torchscale computes GELU in fp32 and casts back. PyTorch's bf16 GELU already computes in fp32 and rounds
        # once (bit-identical, two operators fewer per layer); fp16 on a CPU is not, so it and others upcast.
        h = F.gelu(h) if h.dtype == torch.bfloat16 else F.gelu(h.float()).type_as(h)
        return self.fc2(self.ffn_layernorm(h))


class TransformerLayer(nn.Module):
    """A Sub-LN pre-LN block: self-attention, optional cross-attention (no inner LN), FFN.

    Without cross-attention it is torchscale's EncoderLayer (and the MLLM's decoder layer, which has none);
    with it, torchscale's DecoderLayer in encoder-decoder mode (`encoder_attn`), as in AlignerNet's query decoders.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, *, cross_attention: bool = False, dropout: float = 0.0,
                 attention_dropout: float = 0.0, memory_dim: int | None = None, dtype=None, device=None,
                 ops: Ops = CoreOps):
        """`memory_dim`: the width of what the cross-attention reads, when it is not `dim` (its k/v projections
        then map memory_dim -> dim)."""
        super().__init__()
        f = factory(dtype, device)
        self.dropout = dropout
        self.self_attn = Attention(dim, heads, subln=True, dropout=attention_dropout, ops=ops, **f)
        self.self_attn_layer_norm = ops.LayerNorm(dim, **f)
        if cross_attention:
            self.encoder_attn = Attention(dim, heads, kdim=memory_dim, dropout=attention_dropout, ops=ops, **f)
            self.encoder_attn_layer_norm = ops.LayerNorm(dim, **f)
        else:
            self.encoder_attn = None
        self.ffn = FeedForward(dim, ffn_dim, ops=ops, **f)
        self.final_layer_norm = ops.LayerNorm(dim, **f)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self._drop(self.self_attn(self.self_attn_layer_norm(x), attn_mask=attn_mask, is_causal=is_causal))
        if self.encoder_attn is not None:
            x = x + self._drop(self.encoder_attn(self.encoder_attn_layer_norm(x), memory, attn_mask=memory_mask))
        return x + self._drop(self.ffn(self.final_layer_norm(x)))


class LayerStack(nn.ModuleList):
    """Runs layers in order, with optional activation checkpointing (recompute in backward) while training."""

    gradient_checkpointing: bool = False

    def run(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        for layer in self:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False, **kwargs)
            else:
                x = layer(x, **kwargs)
        return x


@torch.no_grad()
def subln_init_(module: nn.Module, scale: float, skip: str = "encoder_attn") -> None:
    """MAGNETO's Sub-LN initialisation as torchscale applies it at build time: multiply the weights and biases of
    every fc1, fc2, out_proj and v_proj by `scale` (cross-attention, `skip`, excluded in decoders). Only matters
    when a stack is trained from scratch (AlignerNet in stage 2, a tiny MLLM)."""
    if any(p.device.type == "meta" for p in module.parameters()):
        return
    for name, p in module.named_parameters():
        if skip in name:
            continue
        if any(part in name for part in ("fc1", "fc2", "out_proj", "v_proj")):
            p.mul_(scale)


def key_padding_mask(pad: torch.Tensor) -> torch.Tensor:
    """(B, T) True at pads -> SDPA boolean mask (B, 1, 1, T), True where attention is allowed."""
    return ~pad[:, None, None, :]
