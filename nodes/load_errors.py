"""Messages of the Load KOSMOS-G node: what is wrong, which folder, what to do (plain functions, no ComfyUI)."""

from __future__ import annotations

from collections.abc import Sequence

from .model_folder import FOLDER_NAME, searched_folders_text

_HOW_TO_GET = (
    "A KOSMOS-G file is made by `python -m kosmos_g_core.convert` (from an official checkpoint) or exported by the "
    "pack's trainer (stages 2-3)."
)


def missing_file_message(name: str, folders: Sequence[str], available: Sequence[str]) -> str:
    """The dropdown value does not name a file in any `kosmos_g` folder (renamed, moved, or a shared workflow)."""
    if available:
        listed = ", ".join(repr(a) for a in list(available)[:10]) + (" ..." if len(available) > 10 else "")
        found = f"The folder holds: {listed}. Pick one of them, or put '{name}' there"
    else:
        found = f"The folder is empty: put the KOSMOS-G .safetensors file there. {_HOW_TO_GET}"
    return (
        f"KOSMOS-G model file '{name}' not found in models/{FOLDER_NAME}/ (searched: {searched_folders_text(list(folders))}). "
        f"{found}; then press R (refresh) in ComfyUI. Other folders can be added under the key '{FOLDER_NAME}' in "
        "extra_model_paths.yaml."
    )


def not_kosmos_message(core_message: str, folders: Sequence[str]) -> str:
    """A file in `models/kosmos_g/` that the core refused (CheckpointError text), plus which folder it belongs in."""
    lowered = core_message.lower()
    if "stable diffusion checkpoint" in lowered:
        where = ("Move it to models/checkpoints/ and load it with Load Checkpoint (it gives the MODEL and VAE that "
                 "KOSMOS-G conditioning drives).")
    elif "lora" in lowered or "controlnet" in lowered or "u-net" in lowered:
        where = "Move it to models/loras/ or models/controlnet/ as appropriate."
    else:
        where = _HOW_TO_GET
    return (
        f"{core_message} {where} models/{FOLDER_NAME}/ is for KOSMOS-G files only "
        f"(searched: {searched_folders_text(list(folders))})."
    )


def mllm_only_message(path: str) -> str:
    """A checkpoint without AlignerNet (an MLLM converted from Kosmos-2) cannot condition a U-Net yet."""
    return (
        f"{path} holds only the multimodal language model (no AlignerNet), e.g. a Kosmos-2 conversion: it cannot make "
        "SD1.5 conditioning until it has been trained. Train stage 2 (aligning) and stage 3 (instruction tuning) "
        "with the pack's trainer, then load the exported file."
    )
