"""The layout world's segmenter for semantic supervision: a tiny transformers SegFormer trained on layout-world
pictures, saved as a local model folder that kosmos_g_core.layout.segmenter.Segmenter loads like any real one.

It plays the role of ALDM's UperNet / ControlNet++'s reward segmenter: a frozen network whose per-pixel cross-entropy
on a decoded prediction tells the generator where the picture disagrees with the layout. The study scores pictures
with the exact colour reader (scorer.py), never with this network, so the evaluation does not reward fooling it.

Training pictures are degraded as decoded predictions are (blur, noise, colour shifts), so the segmenter's gradients
stay informative on the blurry x0 estimates it is shown during training.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kosmos_g_core.layout.labels import CLASS_ID

from .scenes import APPEARANCE, make_scene, render

log = logging.getLogger(__name__)

CLASSES = tuple(APPEARANCE)  # the segmenter's label space, COCO-Stuff names (Segmenter maps them by name)
_TO_INDEX = np.full(256, 255, dtype=np.int64)
for _i, _name in enumerate(CLASSES):
    _TO_INDEX[CLASS_ID[_name]] = _i


def _degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x (B, 3, S, S) in [0, 1]: a random blur, colour shift and noise per picture."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.2
    k = torch.arange(-2, 3, dtype=torch.float32)
    out = []
    for i in range(b):
        w = torch.exp(-k**2 / (2 * float(sigma[i]) ** 2 + 1e-6))
        w = (w / w.sum()).view(1, 1, 1, 5)
        y = F.conv2d(F.pad(x[i : i + 1].transpose(0, 1), (2, 2, 0, 0), mode="replicate"), w)
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), w.transpose(-1, -2)).transpose(0, 1)
        out.append(y)
    y = torch.cat(out)
    y = y + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.15
    y = y + torch.randn(y.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.08
    return y.clamp(0, 1)


def train_segmenter(out_dir: str | Path, steps: int = 400, batch: int = 32, seed: int = 0,
                    lr: float = 2e-3) -> Path:
    """Train and save the SegFormer folder (config.json with COCO-Stuff id2label, weights, preprocessor config)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    rng, gen = random.Random(f"segmenter/{seed}"), torch.Generator().manual_seed(seed)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        patch_sizes=[3, 3], strides=[2, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=64,
        num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)), label2id={n: i for i, n in enumerate(CLASSES)},
    )
    model = SegformerForSemanticSegmentation(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in range(steps):
        drawn = [make_scene(rng) for _ in range(batch)]
        x = torch.from_numpy(np.stack([render(s.labels) for s in drawn])).permute(0, 3, 1, 2).float() / 255
        x = _degrade(x, gen)
        target = torch.from_numpy(_TO_INDEX[np.stack([s.labels for s in drawn])])  # (B, S, S)
        logits = model(pixel_values=(x - 0.5) / 0.5).logits  # (B, K, S/2, S/2)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, target, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("segmenter step %d/%d loss %.4f", step, steps, loss.item())
    out = Path(out_dir)
    model.eval().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_resize": False}, indent=2))
    return out
