"""Loading the builder's helper models (captioner, entity LLM, segmenter) from local folders only.

Every model is a transformers folder made with ``save_pretrained`` (or downloaded once by the user, e.g. with
``huggingface-cli download <repo> --local-dir <folder>``); nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

import torch


class ModelFolderError(ValueError):
    """A model path that is not a transformers model folder."""


def require_model_folder(path: str | Path, option: str, expected: str) -> Path:
    """``path`` as a Path if it is a folder with a ``config.json``; otherwise a clear error naming the option."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"{option} {folder}: not a folder; expected a local transformers folder of {expected}")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"{option} {folder}: no config.json, so not a transformers model folder; expected {expected} "
            "(a folder written by save_pretrained or downloaded with `huggingface-cli download REPO --local-dir DIR`)"
        )
    return folder


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
