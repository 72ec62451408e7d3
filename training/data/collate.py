"""Per-sample features -> the batch dict of each stage (docs/data.md).

* stage1: tokens (B,T) long, image_mask (B,T) bool, pixels (N,3,S,S), loss_mask (B,T) bool, source list[str]
* stage2: tokens (B,T) long, captions list[str], source list[str]
* stage3: tokens, image_mask, pixels, target (B,3,R,R) in [-1,1], target_geometry (B,6) long (each target's
  original height and width, crop top and left, R, R: SDXL's size conditioning), source list[str], prompt list[str]
  (textual form with ``<i>``), entity_masks list[(E_i,R,R)], entity_token_index list[list[LongTensor]]

Every stage also has ``keys`` (list[str], ``shard#key`` of each sample, for debugging and tests). When the run reads
a frozen-output cache (``[sd15] cache_outputs``), stage 2 also has ``clip_target`` (B,77,768) (SDXL: (B,77,2048) and
``clip_pooled`` (B,1280)) and stage 3
``latent_mean`` and ``latent_std`` (B,4,R/8,R/8), in the dtype they were computed in (frozen_cache.py).
Tokens are right-padded with ``<pad>`` (1); pixels are ordered by sample, then by occurrence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kosmos_g_core.prompt import pad_rows
from kosmos_g_core.tokenizer import KosmosTokenizer

from .features import Features


def _pixels(features: Sequence[Features], image_size: int) -> torch.Tensor:
    images = [p for f in features for p in f.pixels]
    if not images:
        return torch.zeros(0, 3, image_size, image_size)
    return torch.stack(images)


def _frozen(features: Sequence[Features]) -> dict[str, torch.Tensor]:
    """The cached frozen-model outputs, stacked per name (every sample of a batch has them, or none does)."""
    names = features[0].frozen.keys() if features else ()
    return {name: torch.stack([f.frozen[name] for f in features]) for name in names}


def next_token_loss_mask(tokens: torch.Tensor, image_mask: torch.Tensor, tokenizer: KosmosTokenizer) -> torch.Tensor:
    """(B,T) bool: True where the NEXT token is a text target. Targets that are image markup (the first
    ``<image>`` and the 64 slots) or padding are excluded, as the official loss mask excludes them; ``</image>``
    and ``</s>`` count as text."""
    next_tokens = tokens[:, 1:]
    targets = (next_tokens != tokenizer.PAD) & ~image_mask[:, 1:] & (next_tokens != tokenizer.BOI)
    return torch.cat([targets, torch.zeros_like(targets[:, :1])], dim=1)


def collate(stage: str, features: Sequence[Features], tokenizer: KosmosTokenizer, image_size: int) -> dict[str, Any]:
    """The batch dict of ``stage`` from the features of its samples."""
    tokens, image_mask = pad_rows([(f.ids, f.image_mask) for f in features], tokenizer.PAD)
    source = [f.source for f in features]
    keys = [f.key for f in features]
    if stage == "stage2":
        return {"tokens": tokens, "captions": [f.caption or "" for f in features], "source": source, "keys": keys,
                **_frozen(features)}
    batch: dict[str, Any] = {
        "tokens": tokens,
        "image_mask": image_mask,
        "pixels": _pixels(features, image_size),
        "source": source,
        "keys": keys,
        "prompt": [f.prompt for f in features],
    }
    if stage == "stage1":
        batch["loss_mask"] = next_token_loss_mask(tokens, image_mask, tokenizer)
        return batch
    batch["target"] = torch.stack([f.target for f in features])
    batch["target_geometry"] = torch.tensor([f.target_geometry for f in features], dtype=torch.long)
    batch["entity_masks"] = [f.entity_masks for f in features]
    batch["entity_token_index"] = [list(f.entity_token_index) for f in features]
    batch["entity_names"] = [list(f.entity_names) for f in features]
    batch.update(_frozen(features))
    return batch
