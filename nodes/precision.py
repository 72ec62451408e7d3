"""The dtype choice of Load KOSMOS-G (plain function, no ComfyUI import)."""

from __future__ import annotations

import torch

from ..kosmos_g_core.dtypes import DTYPES

DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")


def dtype_from_choice(choice: str, auto_dtype: torch.dtype) -> torch.dtype:
    """`auto` -> `auto_dtype` (ComfyUI's text-encoder policy, which honours --fp16-text-enc / --bf16-text-enc /
    --fp32-text-enc); otherwise the named dtype. 8-bit float policies are not supported by the core, so they fall
    back to fp16 storage."""
    if choice == "auto":
        if auto_dtype in (torch.float16, torch.bfloat16, torch.float32):
            return auto_dtype
        return torch.float16
    if choice not in DTYPES:
        raise ValueError(f"unknown dtype {choice!r}; expected one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[choice]
