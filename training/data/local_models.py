"""Loading the builder's helper models (captioner, entity LLM, segmenter) from local folders only.

Every model is a transformers folder made with ``save_pretrained`` (or downloaded once by the user, e.g. with
``huggingface-cli download <repo> --local-dir <folder>``); nothing is fetched at run time.
"""

from __future__ import annotations

import torch

from kosmos_g_core.local_folders import ModelFolderError, require_model_folder

__all__ = ["ModelFolderError", "model_dtype", "move_inputs", "require_model_folder"]


def model_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA (as the official builder), fp32 on CPU (CPU fp16 kernels are slow or missing)."""
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def move_inputs(inputs: dict, device: str, dtype: torch.dtype) -> dict:
    """Processor outputs on ``device``; floating tensors (pixels) in ``dtype``, ids and masks unchanged."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out
