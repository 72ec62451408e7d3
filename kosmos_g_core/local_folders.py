"""The one check for a local transformers model folder (the pack never downloads: every helper model is a folder the
user made with `save_pretrained` or `huggingface-cli download REPO --local-dir DIR`)."""

from __future__ import annotations

from pathlib import Path


class ModelFolderError(FileNotFoundError, ValueError):
    """A model path that is not a transformers model folder (a missing file for some callers, a bad option value for
    others: both kinds catch it)."""


def require_model_folder(path: str | Path, option: str, expected: str) -> Path:
    """`path` as a Path if it is a folder with a `config.json`; otherwise an error naming the option (or what the
    folder is for) and what was expected."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"{option} {folder}: not a folder; expected a local transformers folder "
                               f"(config.json + weights) of {expected}")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"{option} {folder}: no config.json, so not a transformers model folder; expected {expected} "
            "(a folder written by save_pretrained or downloaded with `huggingface-cli download REPO --local-dir DIR`)"
        )
    return folder
