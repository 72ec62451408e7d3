"""AdamW and the warmup-then-linear-decay schedule of the official recipe (official `kosmos-g/runalign.sh`, `kosmos-g/runtrain.sh`: Adam betas 0.9/0.98, eps 1e-6, wd 0.01, clip-norm 2.0, warmup 375, polynomial decay).

fairseq's Adam with decoupled weight decay applied to every trainable tensor = torch AdamW with the same
hyper-parameters: betas (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 1e-3, 375 warmup steps, then polynomial decay of
power 1 (linear) to `min_lr_ratio * lr` at `max_steps`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 2.0           # 0 disables clipping
    warmup_steps: int = 375
    min_lr_ratio: float = 0.0        # lr at max_steps, as a fraction of lr
    fused: bool = False              # torch's fused CUDA AdamW kernel


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the stage has no trainable parameters: check [model] trainable in the config")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=cfg.fused or None)


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based): linear warmup to 1, then linear decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, max_steps, cfg.min_lr_ratio))
