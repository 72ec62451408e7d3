"""CLIP ViT-L/14 image encoder as KOSMOS-G uses it.

Follows `kosmos-g/unilm/models/vl/clip.py:45-64` (VisualTransformer4Seq2Seq) on open_clip's ViT: QuickGELU, pre-LN residual blocks, `ln_post` applied to all 257 tokens (class token and patches), then each
token L2-normalised; no output projection. Attention weights are torchscale's (`ts_attn`), no Sub-LN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import Attention, LayerStack, Ops, factory
from .ops import CoreOps


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        self.c_fc = ops.Linear(width, hidden, **factory(dtype, device))
        self.c_proj = ops.Linear(hidden, width, **factory(dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU, as OpenAI CLIP was trained


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.ln_1 = ops.LayerNorm(cfg.width, **f)
        self.ts_attn = Attention(cfg.width, cfg.heads, ops=ops, **f)
        self.ln_2 = ops.LayerNorm(cfg.width, **f)
        self.mlp = MLP(cfg.width, cfg.width * cfg.mlp_ratio, ops=ops, **f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ts_attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    """Only here so the keys read `transformer.resblocks.N.*`, as in open_clip."""

    def __init__(self, cfg: VisionConfig, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        self.resblocks = LayerStack(
            ResidualAttentionBlock(cfg, dtype=dtype, device=device, ops=ops) for _ in range(cfg.layers)
        )


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.config = cfg
        self.conv1 = ops.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False, **f)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width, **f))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_positions, cfg.width, **f))
        self.ln_pre = ops.LayerNorm(cfg.width, **f)
        self.transformer = _Transformer(cfg, ops=ops, **f)
        self.ln_post = ops.LayerNorm(cfg.width, **f)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.class_embedding.device.type == "meta":
            return
        scale = self.config.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) CLIP-normalised -> (N, 257, width) unit-norm token features."""
        x = self.conv1(pixels)  # (N, width, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (N, grid*grid, width)
        cls = self.class_embedding.to(x).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x)  # (N, 257, width)
        x = self.transformer.resblocks.run(self.ln_pre(x))
        return F.normalize(self.ln_post(x), dim=-1)
