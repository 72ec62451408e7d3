"""The image connector (resampler) between the ViT and the MLLM.

Follows `kosmos-g/unilm/models/connector.py` (XConnector, lines 56-83): ViT tokens are projected
1024 -> 2048 by `dense`, then 64 learned latent queries attend once (fairseq multi-head attention, 32 heads) over the
projected tokens concatenated with the queries themselves. No residual, no LayerNorm, no FFN.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConnectorConfig
from .layers import Attention, Ops, factory
from .ops import CoreOps


class Connector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_width: int, dim: int, *, dtype=None, device=None, ops: Ops = CoreOps):
        super().__init__()
        f = factory(dtype, device)
        self.dense = ops.Linear(vision_width, dim, **f)
        self.latent_query = nn.Parameter(torch.empty(cfg.num_queries, dim, **f))
        self.x_attn = Attention(dim, cfg.heads, dropout=cfg.attention_dropout, ops=ops, **f)
        if self.latent_query.device.type != "meta":
            nn.init.normal_(self.latent_query)  # torch.randn, as the official connector

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 257, vision_width) -> (N, num_queries, dim)."""
        x = self.dense(features)  # (N, 257, dim)
        query = self.latent_query.to(x).expand(x.shape[0], -1, -1)  # (N, 64, dim)
        return self.x_attn(query, torch.cat([x, query], dim=1))  # keys/values: (N, 257 + 64, dim)
