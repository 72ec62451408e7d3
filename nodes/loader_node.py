"""Load KOSMOS-G: a file of models/kosmos_g/ -> KOSMOS_G (imports ComfyUI)."""

from __future__ import annotations

import os

import comfy.utils
import folder_paths
from comfy_api.latest import io

from .comfy_types import CATEGORY_LOADERS, KosmosGType
from .kosmos_g_model import load_kosmos_g
from .load_errors import missing_file_message
from .model_folder import FOLDER_NAME, unconverted_files
from .precision import DTYPE_CHOICES


def _find(model_name: str) -> str | None:
    path = folder_paths.get_full_path(FOLDER_NAME, model_name)
    return path if path and os.path.isfile(path) else None


def _missing(model_name: str) -> str:
    folders = folder_paths.get_folder_paths(FOLDER_NAME)
    return missing_file_message(model_name, folders, folder_paths.get_filename_list(FOLDER_NAME),
                                unconverted_files(folders))


class KosmosGLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGLoader",
            display_name="Load KOSMOS-G",
            category=CATEGORY_LOADERS,
            description=(
                "Loads a KOSMOS-G checkpoint (multimodal LLM + vision tower + AlignerNet) from models/kosmos_g/ "
                "(and any 'kosmos_g' folder of extra_model_paths.yaml). ComfyUI manages it like a text encoder: "
                "moved to the GPU for an encode and offloaded afterwards."
            ),
            search_aliases=["kosmos", "kosmos-g", "load kosmos", "multimodal prompt"],
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folder_paths.get_filename_list(FOLDER_NAME),
                    tooltip="A KOSMOS-G .safetensors file in models/kosmos_g/ (made by the converter or the trainer; "
                    "an official .pt is not listed until converted). Press R to refresh the list after adding a file.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    tooltip="Weight precision. auto follows ComfyUI's text-encoder policy (fp16 unless you start "
                    "ComfyUI with --bf16-text-enc or --fp32-text-enc). fp32 doubles the memory of fp16.",
                ),
            ],
            outputs=[KosmosGType.Output(display_name="KOSMOS_G", tooltip="The loaded KOSMOS-G model.")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        # Replaces ComfyUI's generic "value not in list" with which folders were searched and what to do. Only
        # model_name is a parameter: ComfyUI files a failed custom validation once per parameter (the frontend then
        # showed the missing file three times, and on the dtype widget), and it checks dtype against its list itself.
        if not isinstance(model_name, str) or _find(model_name) is None:
            return _missing(str(model_name))
        return True

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto") -> io.NodeOutput:
        folders = folder_paths.get_folder_paths(FOLDER_NAME)
        path = _find(model_name)
        if path is None:
            raise FileNotFoundError(_missing(model_name))
        bar = comfy.utils.ProgressBar(3)
        model = load_kosmos_g(path, model_name, dtype, folders, progress=lambda done, total: bar.update_absolute(done, total))
        return io.NodeOutput(model)
