"""Messages of the Load KOSMOS-G node: what is wrong, which folder, what to do (plain functions, no ComfyUI)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from ..kosmos_g_core.checkpoint import CheckpointError, StableDiffusionFileError, UNetWeightsFileError
from .model_folder import FOLDER_NAME, searched_folders_text

# The pack's folder (custom_nodes/<whatever it was cloned as>/) and its converter script, which runs from any folder:
# `python -m kosmos_g_core.convert` does not, since ComfyUI does not put the pack on sys.path.
PACK_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
CONVERTER = os.path.join(PACK_DIR, "convert.py")


def _quote(arg: str) -> str:
    return subprocess.list2cmdline([arg]) if os.name == "nt" else shlex.quote(arg)


def convert_command(checkpoint: str, python: str = sys.executable) -> str:
    """The exact command converting an official `checkpoint` (.pt) into a .safetensors beside it, with ComfyUI's own
    python and absolute paths, so it works as written from any folder. The official tokenizer, which the .pt does
    not hold, comes from the pack's own copy (the converter's default)."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    args = [python, CONVERTER, "--official", os.path.abspath(checkpoint),
            "--out", os.path.join(folder, stem + ".safetensors")]
    return " ".join(_quote(a) for a in args)


_HOW_TO_GET = (
    f"A KOSMOS-G file is made from an official checkpoint by the pack's converter ({_quote(sys.executable)} "
    f"{_quote(CONVERTER)} --help; see docs/converting.md) or exported by the pack's trainer (stages 2-3)."
)


def _unconverted_text(unconverted: Sequence[str], also: bool) -> str:
    names = ", ".join(f"'{os.path.basename(p)}'" for p in unconverted[:5]) + (" ..." if len(unconverted) > 5 else "")
    commands = " and ".join(f"`{convert_command(p)}`" for p in unconverted[:2])
    return (
        f"The folder {'also ' if also else ''}holds {names}: {'an official checkpoint' if len(unconverted) == 1 else 'official checkpoints'}"
        " (.pt) that needs converting once, since the loader reads only the pack's .safetensors files. Put the "
        "official tokenizer files sentencepiece.bpe.model and dict.txt (kosmos-g/data/ of microsoft/unilm) beside it "
        f"and run, from any folder: {commands}."
    )


def missing_file_message(name: str, folders: Sequence[str], available: Sequence[str],
                         unconverted: Sequence[str] = ()) -> str:
    """The dropdown value does not name a file in any `kosmos_g` folder (renamed, moved, or a shared workflow).
    `unconverted` are the .pt files there (model_folder.unconverted_files): named, with the command converting them."""
    parts = [f"KOSMOS-G model file '{name}' not found in models/{FOLDER_NAME}/ "
             f"(searched: {searched_folders_text(list(folders))})."]
    if available:
        listed = ", ".join(repr(a) for a in list(available)[:10]) + (" ..." if len(available) > 10 else "")
        parts.append(f"The folder holds: {listed}. Pick one of them, or put '{name}' there.")
    elif not unconverted:
        parts.append(f"The folder is empty: put the KOSMOS-G .safetensors file there. {_HOW_TO_GET}")
    if unconverted:
        parts.append(_unconverted_text(list(unconverted), also=bool(available)))
    parts.append(f"Then press R (refresh) in ComfyUI. Other folders can be added under the key '{FOLDER_NAME}' in "
                 "extra_model_paths.yaml.")
    return " ".join(parts)


def not_kosmos_message(error: CheckpointError, folders: Sequence[str]) -> str:
    """A file in `models/kosmos_g/` that the core refused, plus which folder it belongs in (told by the error's
    type)."""
    if isinstance(error, StableDiffusionFileError):
        where = ("Move it to models/checkpoints/ and load it with Load Checkpoint (it gives the MODEL and VAE that "
                 "KOSMOS-G conditioning drives).")
    elif isinstance(error, UNetWeightsFileError):
        where = "Move it to models/loras/ or models/controlnet/ as appropriate."
    else:
        where = _HOW_TO_GET
    return (
        f"{error} {where} models/{FOLDER_NAME}/ is for KOSMOS-G files only "
        f"(searched: {searched_folders_text(list(folders))})."
    )


def mllm_only_message(path: str) -> str:
    """A checkpoint without AlignerNet (an MLLM converted from Kosmos-2) cannot condition a U-Net yet."""
    return (
        f"{path} holds only the multimodal language model (no AlignerNet), e.g. a Kosmos-2 conversion: it cannot make "
        "SD1.5 conditioning until it has been trained. Train stage 2 (aligning) and stage 3 (instruction tuning) "
        "with the pack's trainer, then load the exported file."
    )
