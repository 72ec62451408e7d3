"""The names of the floating dtypes users choose (CLIs, configs, nodes): one table for the whole pack."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_from_name(name: str, what: str = "dtype") -> torch.dtype:
    """`"bf16"` -> torch.bfloat16; an unknown name is a ValueError that names the setting (`what`)."""
    if name not in DTYPES:
        raise ValueError(f"{what} = {name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]
