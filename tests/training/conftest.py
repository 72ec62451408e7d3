"""Fixtures shared by the trainer's tests."""

from __future__ import annotations

import pytest
import torch

from training.optim import OptimConfig, build_optimizer


def _train_on(stage, model, batch: dict, steps: int, lr: float) -> list[float]:
    """Steps of AdamW on one batch; the RNG is reset each step so noise, timesteps and dropout repeat."""
    optimizer = build_optimizer(stage.trainable_parameters(model), OptimConfig(lr=lr, warmup_steps=0))
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        loss, _ = stage.loss(model, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture
def train_on():
    """`train_on(stage, model, batch, steps, lr)` -> the losses of `steps` AdamW steps on one fixed batch."""
    return _train_on
