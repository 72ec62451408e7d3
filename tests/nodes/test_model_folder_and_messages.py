"""models/kosmos_g registration (with ComfyUI's add_model_folder_path semantics), dtype choice and loader
messages, without ComfyUI."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import types

import pytest
import torch


class FakeFolderPaths(types.SimpleNamespace):
    """The two bits of ComfyUI's folder_paths the registration touches, with the same semantics."""

    def __init__(self, models_dir: str):
        super().__init__(models_dir=models_dir, folder_names_and_paths={})

    def add_model_folder_path(self, name: str, path: str, is_default: bool = False) -> None:
        if name in self.folder_names_and_paths:
            paths, _ = self.folder_names_and_paths[name]
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)
        else:
            self.folder_names_and_paths[name] = ([path], set())


def test_fresh_registration(pack):
    mf = pack("nodes.model_folder")
    fp = FakeFolderPaths("/comfy/models")
    mf.register_model_folder(fp)
    paths, extensions = fp.folder_names_and_paths["kosmos_g"]
    assert paths == ["/comfy/models/kosmos_g"] and extensions == {".safetensors", ".sft"}


def test_yaml_entries_are_kept_and_the_default_folder_added(pack):
    mf = pack("nodes.model_folder")
    fp = FakeFolderPaths("/comfy/models")
    fp.add_model_folder_path("kosmos_g", "/big/disk/kosmos_g")  # what extra_model_paths.yaml did before us
    mf.register_model_folder(fp)
    mf.register_model_folder(fp)  # importing twice changes nothing
    paths, extensions = fp.folder_names_and_paths["kosmos_g"]
    assert paths == ["/big/disk/kosmos_g", "/comfy/models/kosmos_g"]
    assert extensions == {".safetensors", ".sft"}


def test_dtype_choice(pack):
    precision = pack("nodes.precision")
    assert precision.dtype_from_choice("auto", torch.bfloat16) is torch.bfloat16
    assert precision.dtype_from_choice("auto", torch.float8_e4m3fn) is torch.float16
    assert precision.dtype_from_choice("fp32", torch.float16) is torch.float32
    with pytest.raises(ValueError, match="expected one of auto, fp16, bf16, fp32"):
        precision.dtype_from_choice("fp64", torch.float16)


def test_loader_messages_say_where_and_what(pack):
    errors = pack("nodes.load_errors")
    missing = errors.missing_file_message("kosmos.safetensors", ["/m/kosmos_g"], ["kosmos-g.safetensors"])
    assert "'kosmos.safetensors' not found in models/kosmos_g/" in missing and "/m/kosmos_g" in missing
    assert "'kosmos-g.safetensors'" in missing and "extra_model_paths.yaml" in missing
    assert "The folder is empty" in errors.missing_file_message("x.safetensors", ["/m/kosmos_g"], [])
    from kosmos_g_core.checkpoint import StableDiffusionFileError

    sd = errors.not_kosmos_message(
        StableDiffusionFileError("/m/kosmos_g/v1-5.safetensors is a Stable Diffusion checkpoint, not ..."), ["/m"])
    assert "models/checkpoints/" in sd and "Load Checkpoint" in sd
    assert "stage 2" in errors.mllm_only_message("/m/k2.safetensors")


def test_a_real_sd_checkpoint_header_gets_the_folder_advice(pack, tmp_path):
    from safetensors.torch import save_file

    from kosmos_g_core.checkpoint import CheckpointError, read_header

    errors = pack("nodes.load_errors")
    path = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    message = errors.not_kosmos_message(e.value, [str(tmp_path)])
    assert "Stable Diffusion checkpoint" in message and "models/checkpoints/" in message


def test_an_unconverted_official_file_is_named_with_a_command_that_works(pack, test_helper, tmp_path,
                                                                          kosmos_tokenizer):
    """With only checkpoint_final.pt in models/kosmos_g/ the user reads its name and a convert command, which works
    as written from another folder (ComfyUI's, where `python -m kosmos_g_core.convert` does not)."""
    from kosmos_g_core import KosmosGConfig, load_checkpoint

    errors, folder = pack("nodes.load_errors"), pack("nodes.model_folder")
    models = tmp_path / "models" / "kosmos_g"
    models.mkdir(parents=True)
    test_helper("official_files").write_tiny_official(models / "checkpoint_final.pt", kosmos_tokenizer)
    unconverted = folder.unconverted_files([str(models)])
    assert unconverted == [str(models / "checkpoint_final.pt")]
    message = errors.missing_file_message("kosmos-g.safetensors", [str(models)], [], unconverted)
    assert "The folder is empty" not in message
    assert "The folder holds 'checkpoint_final.pt': an official checkpoint (.pt) that needs converting" in message
    command = message.split("`")[1]
    assert command.startswith(shlex.quote(sys.executable)) and "convert.py --official" in command

    elsewhere = tmp_path / "ComfyUI"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(shlex.split(command), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert load_checkpoint(models / "checkpoint_final.safetensors").config == KosmosGConfig.tiny()

    # Once converted, the .safetensors is listed and the .pt is still named, as "also".
    again = errors.missing_file_message("x.safetensors", [str(models)], ["checkpoint_final.safetensors"],
                                        folder.unconverted_files([str(models)]))
    assert "'checkpoint_final.safetensors'" in again and "The folder also holds 'checkpoint_final.pt'" in again
