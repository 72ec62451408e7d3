"""CONDITIONING rules of the pack as plain functions (torch only, no ComfyUI import).

ComfyUI's CONDITIONING is a list of `[tensor (B, L, D), dict]` entries. KOSMOS-G makes `(B, 77, 768)` tensors with
an empty dict: the SD1.5 U-Net takes them exactly where CLIP's text embedding goes, and since positive and negative
have the same L = 77, KSampler runs both through the U-Net in one batch.
"""

from __future__ import annotations

from typing import Any

import torch

SD15_CONTEXT_DIM = 768

Conditioning = list[list[Any]]


def to_conditioning(tensor: torch.Tensor) -> Conditioning:
    """(B, 77, 768) -> a CONDITIONING with one entry."""
    if tensor.ndim != 3:
        raise ValueError(f"expected a conditioning tensor (B, L, D), got shape {tuple(tensor.shape)}")
    return [[tensor, {}]]


def _match_batch(a: torch.Tensor, b: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape[0] == b.shape[0]:
        return a, b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], -1, -1)
    if a.shape[0] == 1:
        return a.expand(b.shape[0], -1, -1), b
    raise ValueError(
        f"{what}: the KOSMOS-G conditioning is a batch of {a.shape[0]} and the CLIP conditioning a batch of "
        f"{b.shape[0]}; one of them must be a single prompt (batch of 1) or both the same size"
    )


def concat_clip(kosmos: Conditioning, clip: Conditioning, clip_strength: float = 1.0) -> Conditioning:
    """Append CLIP text tokens after KOSMOS-G's on every entry: (B, 77, 768) + (b, 77k, 768) -> (B, 77 + 77k, 768).

    The U-Net then attends to both, so a LoRA's trigger words (which live in CLIP's token space) still act while
    KOSMOS-G carries the subject. `clip_strength` scales the CLIP tokens. Only the first CLIP entry is used (as
    stock ConditioningConcat does); each KOSMOS-G entry keeps its own options dict.
    """
    if not clip:
        raise ValueError("the CLIP conditioning is empty")
    clip_tensor = clip[0][0] * clip_strength
    out: Conditioning = []
    for tensor, options in kosmos:
        if tensor.shape[-1] != clip_tensor.shape[-1]:
            raise ValueError(
                f"the CLIP conditioning is {clip_tensor.shape[-1]}-dimensional but KOSMOS-G's is {tensor.shape[-1]}; "
                "KOSMOS-G is made for Stable Diffusion 1.5, so use the CLIP of an SD1.5 checkpoint (768-d), not "
                "SDXL's (2048-d) or SD2's (1024-d)"
            )
        left, right = _match_batch(tensor, clip_tensor.to(device=tensor.device, dtype=tensor.dtype), "KOSMOS-G + CLIP")
        out.append([torch.cat([left, right], dim=1), dict(options)])
    return out


def sd15_problem(context_dim: int | None, model_name: str) -> str | None:
    """None if a U-Net with this cross-attention width takes KOSMOS-G conditioning, else a plain-language error."""
    if context_dim == SD15_CONTEXT_DIM:
        return None
    known = {1024: "Stable Diffusion 2.x", 2048: "SDXL", 4096: "a T5-conditioned model (Flux, SD3, ...)"}
    family = known.get(context_dim, "not Stable Diffusion 1.5") if context_dim else "a model without cross-attention"
    width = f"{context_dim}-dimensional" if context_dim else "no"
    return (
        f"this MODEL ({model_name}) takes {width} text conditioning: it looks like {family}. KOSMOS-G makes "
        f"{SD15_CONTEXT_DIM}-dimensional conditioning for Stable Diffusion 1.5 and its fine-tunes only; load an SD1.5 "
        "checkpoint (Load Checkpoint) for the MODEL and VAE"
    )
