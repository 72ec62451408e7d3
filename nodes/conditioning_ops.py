"""CONDITIONING rules of the pack as plain functions (torch only, no ComfyUI import).

ComfyUI's CONDITIONING is a list of `[tensor (B, L, D), dict]` entries. An SD1.5 KOSMOS-G file makes `(B, 77, 768)`
tensors with an empty dict: the SD1.5 U-Net takes them exactly where CLIP's text embedding goes, and since positive
and negative have the same L = 77, KSampler runs both through the U-Net in one batch.

An SDXL file makes what SDXL's two text encoders give (`comfy/sd.py` `encode_from_tokens`): a `(B, 77, 2048)` context
with `{"pooled_output": (B, 1280)}`, plus, from KOSMOS-G Encode, the size conditioning CLIP Text Encode (SDXL) adds
(`comfy_extras/nodes_clip_sdxl.py`). SDXL's `encode_adm` (`comfy/model_base.py`) reads them into the U-Net's
2816-wide ADM input: pooled 1280 + 6 sizes x 256; a size left out is taken from the latent at sampling time
(`comfy/samplers.py` `encode_model_conds`), which is what plain CLIP Text Encode with an SDXL CLIP relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SD15_CONTEXT_DIM = 768
SDXL_CONTEXT_DIM = 2048  # CLIP-L 768 + OpenCLIP bigG 1280, concatenated
SDXL_POOLED_DIM = 1280
# SDXL's ADM input: the pooled vector, then 6 size values each embedded to 256 channels (model_base.SDXL.encode_adm).
SDXL_SIZE_CHANNELS = 6 * 256
# CLIP Text Encode (SDXL)'s size conditioning and its defaults, in its input order.
SDXL_SIZE_DEFAULTS: dict[str, int] = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
                                      "target_width": 1024, "target_height": 1024}

Conditioning = list[list[Any]]


def to_conditioning(tensor: torch.Tensor, pooled: torch.Tensor | None = None,
                    size: Mapping[str, int] | None = None) -> Conditioning:
    """(B, 77, D) [+ pooled (B, P) and size conditioning] -> a CONDITIONING with one entry.

    Without `pooled` (SD1.5) the dict is empty, as it always was. With it (SDXL) the dict holds `pooled_output` and,
    when given, the keys of `size` (a subset of SDXL_SIZE_DEFAULTS)."""
    if tensor.ndim != 3:
        raise ValueError(f"expected a conditioning tensor (B, L, D), got shape {tuple(tensor.shape)}")
    if pooled is None:
        if size:
            raise ValueError("size conditioning belongs to SDXL conditioning, which needs a pooled vector")
        return [[tensor, {}]]
    if pooled.ndim != 2 or pooled.shape[0] != tensor.shape[0]:
        raise ValueError(f"the pooled vector has shape {tuple(pooled.shape)}; expected ({tensor.shape[0]}, P), one row "
                         f"per conditioning row")
    unknown = sorted(set(size or {}) - set(SDXL_SIZE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown size conditioning {unknown}; expected some of {list(SDXL_SIZE_DEFAULTS)}")
    return [[tensor, {"pooled_output": pooled, **{k: int(v) for k, v in (size or {}).items()}}]]


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
            ours, theirs = tensor.shape[-1], clip_tensor.shape[-1]
            raise ValueError(
                f"the CLIP conditioning is {theirs}-dimensional but KOSMOS-G's is {ours}; use the CLIP of a checkpoint "
                f"of the KOSMOS-G file's base ({_width_family(ours)}, {ours}-d), not {_width_family(theirs)}'s "
                f"({theirs}-d): an SD1.5 checkpoint's with an SD1.5 KOSMOS-G file, an SDXL checkpoint's with an SDXL one"
            )
        left, right = _match_batch(tensor, clip_tensor.to(device=tensor.device, dtype=tensor.dtype), "KOSMOS-G + CLIP")
        out.append([torch.cat([left, right], dim=1), dict(options)])
    return out


_WIDTH_FAMILIES = {768: "SD1.5", 1024: "SD2.x", 1280: "the SDXL refiner", 2048: "SDXL", 4096: "T5: Flux, SD3, ..."}


def _width_family(width: int) -> str:
    return _WIDTH_FAMILIES.get(width, "an unusual width")


def _model_family(context_dim: int | None) -> str:
    known = {1024: "Stable Diffusion 2.x", 2048: "SDXL", 4096: "a T5-conditioned model (Flux, SD3, ...)"}
    if not context_dim:
        return "a model without cross-attention"
    return known.get(context_dim, "not Stable Diffusion 1.5")


def sd15_problem(context_dim: int | None, model_name: str) -> str | None:
    """None if a U-Net with this cross-attention width takes SD1.5 KOSMOS-G conditioning, else a plain-language
    error. What Check Model says when no KOSMOS-G file is connected to it (the SD1.5 check it always was)."""
    if context_dim == SD15_CONTEXT_DIM:
        return None
    width = f"{context_dim}-dimensional" if context_dim else "no"
    text = (
        f"this MODEL ({model_name}) takes {width} text conditioning: it looks like {_model_family(context_dim)}. "
        f"A KOSMOS-G file for SD1.5 makes {SD15_CONTEXT_DIM}-dimensional conditioning for Stable Diffusion 1.5 and its "
        "fine-tunes only; load an SD1.5 checkpoint (Load Checkpoint) for the MODEL and VAE"
    )
    if context_dim == SDXL_CONTEXT_DIM:
        text += (". With a KOSMOS-G file for SDXL, connect its Load KOSMOS-G to this node's kosmos_g input, which "
                 "checks the MODEL against that file")
    return text


def _kosmos_family(context_dim: int, pooled_dim: int | None) -> str:
    if pooled_dim is None:
        return "SD1.5" if context_dim == SD15_CONTEXT_DIM else "a U-Net without pooled input"
    return "SDXL" if (context_dim, pooled_dim) == (SDXL_CONTEXT_DIM, SDXL_POOLED_DIM) else "an SDXL-style U-Net"


def describe_kosmos(context_dim: int, pooled_dim: int | None) -> str:
    """What a KOSMOS-G file conditions, in a user's words: 'SDXL (2048-d context + 1280-d pooled)', 'SD1.5 (768-d)'."""
    family = _kosmos_family(context_dim, pooled_dim)
    if pooled_dim is None:
        return f"{family} ({context_dim}-d)"
    return f"{family} ({context_dim}-d context + {pooled_dim}-d pooled)"


def describe_model(context_dim: int | None, adm_in_channels: int | None) -> str:
    """What a MODEL takes, from its unet_config: 'SDXL (2048-d context + 1280-d pooled)', 'SD1.5 (768-d)', ..."""
    if not context_dim:
        return "a model without cross-attention"
    if adm_in_channels is None:
        family = {SD15_CONTEXT_DIM: "SD1.5", 1024: "SD2.x", 4096: "T5-conditioned (Flux, SD3, ...)"}.get(
            context_dim, "an unusual model")
        return f"{family} ({context_dim}-d)"
    pooled = adm_in_channels - SDXL_SIZE_CHANNELS
    if (context_dim, adm_in_channels) == (SDXL_CONTEXT_DIM, SDXL_POOLED_DIM + SDXL_SIZE_CHANNELS):
        return f"SDXL ({context_dim}-d context + {pooled}-d pooled)"
    if context_dim == 1280:
        return f"the SDXL refiner ({context_dim}-d context, {adm_in_channels}-wide ADM input)"
    return f"a model with {context_dim}-d context and a {adm_in_channels}-wide ADM input"


def model_problem(context_dim: int | None, adm_in_channels: int | None, model_name: str, kosmos_context_dim: int,
                  kosmos_pooled_dim: int | None, kosmos_name: str) -> str | None:
    """None if the MODEL takes the conditioning of this KOSMOS-G file, else a message naming both.

    An SD1.5 file needs the U-Net's cross-attention width, as `sd15_problem`; an SDXL file also needs SDXL's ADM
    input (pooled + 6 x 256 size channels), which is what its pooled vector and size conditioning fill."""
    if kosmos_pooled_dim is None:
        fits = context_dim == kosmos_context_dim
    else:
        fits = context_dim == kosmos_context_dim and adm_in_channels == kosmos_pooled_dim + SDXL_SIZE_CHANNELS
    if fits:
        return None
    ours = describe_kosmos(kosmos_context_dim, kosmos_pooled_dim)
    theirs = describe_model(context_dim, adm_in_channels)
    base = _kosmos_family(kosmos_context_dim, kosmos_pooled_dim)
    return (
        f"this KOSMOS-G file ({kosmos_name}) is for {ours} but the connected MODEL ({model_name}) is {theirs}. Load "
        f"a checkpoint of the same base as the KOSMOS-G file ({base}) for the MODEL and VAE, or a KOSMOS-G file made "
        "for the MODEL's base in Load KOSMOS-G"
    )
