"""The DreamBench similarity scores as KOSMOS-G computes them (`eval/dino_score.py`, `eval/clip_score.py`).

All take L2-normalised features. Scores are reported on a 0..1 scale (the paper's tables; the official scripts
multiply by 100). CLIP-I and CLIP-T clip each cosine at 0 as the official `clip_score.py` does; DINO does not.
"""

from __future__ import annotations

import torch


def pairwise_cosine(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine of every generated (G, D) against every reference (R, D) feature -> (G, R)."""
    if generated.shape[-1] != references.shape[-1]:
        raise ValueError(f"feature sizes differ: {tuple(generated.shape)} vs {tuple(references.shape)}")
    return generated.double() @ references.double().T


def image_similarity(generated: torch.Tensor, references: torch.Tensor, clip_at_zero: bool) -> float:
    """Mean pairwise cosine between generated and reference image features (DINO: clip_at_zero=False)."""
    sims = pairwise_cosine(generated, references)
    if clip_at_zero:
        sims = sims.clamp(min=0.0)
    return float(sims.mean())


def text_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP-T: mean over matched (image i, prompt i) pairs of max(cos, 0)."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"CLIP-T needs one prompt per image: {tuple(image_features.shape)} vs {tuple(text_features.shape)}"
        )
    return float((image_features.double() * text_features.double()).sum(-1).clamp(min=0.0).mean())
