"""Fixtures of the node tests.

* `pack`: imports modules of the pack's `nodes/` package without ComfyUI and without putting the repository root on
  sys.path (it would shadow ComfyUI's top-level `nodes`): the repository is mounted as a package named
  `kosmos_g_pack` whose `kosmos_g_core` is the installed core, as ComfyUI mounts it under its folder name.
* `comfy_server` (only with COMFYUI_PATH): a real ComfyUI started on CPU in a subprocess, on 127.0.0.1 and a free
  port, with a temporary base directory holding random SD1.5- and SDXL-shaped models, tiny random KOSMOS-G files
  for each base (and an unconverted official-format .pt of one), the pack
  (symlinked) and a probe node pack (tests/nodes/comfy_probe_nodes.py) that records U-Net batches.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PACK_NAME = "kosmos_g_pack"
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL_NAME = "sd_xl_base_1.0.safetensors"
KOSMOS_G_NAME = "kosmos-g.safetensors"
KOSMOS_G_SDXL_NAME = "kosmos-g-sdxl.safetensors"
OFFICIAL_PT_NAME = "checkpoint_final.pt"


def load_pack_module(name: str) -> types.ModuleType:
    """`nodes.prompt_inputs` -> the module, imported as `kosmos_g_pack.nodes.prompt_inputs`."""
    if PACK_NAME not in sys.modules:
        import kosmos_g_core

        for sub in ("checkpoint", "config", "image", "layout", "model", "prompt", "tokenizer"):
            importlib.import_module(f"kosmos_g_core.{sub}")
        package = types.ModuleType(PACK_NAME)
        package.__path__ = [str(REPO_ROOT)]  # a namespace for nodes/, never executing the root __init__.py
        sys.modules[PACK_NAME] = package
        # The core is the installed one, so objects made by tests and by the pack share classes.
        for module_name, module in list(sys.modules.items()):
            if module_name == "kosmos_g_core" or module_name.startswith("kosmos_g_core."):
                sys.modules[f"{PACK_NAME}.{module_name}"] = module
        package.kosmos_g_core = kosmos_g_core
    return importlib.import_module(f"{PACK_NAME}.{name}")


def load_test_helper(name: str) -> types.ModuleType:
    """A helper module of tests/nodes (workflow_format, ...) by path, under a private name."""
    full = f"kosmos_g_node_tests_{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


@pytest.fixture(scope="session")
def pack():
    return load_pack_module


@pytest.fixture(scope="session")
def test_helper():
    return load_test_helper


# ----------------------------------------------------------------------------------------------- real ComfyUI


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is not set: the end-to-end tests need a ComfyUI v0.33 checkout")
    path = Path(path).resolve()
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={path} has no main.py; point it at a ComfyUI checkout")
    return path


@pytest.fixture(scope="session")
def comfy_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def sd15_models(tmp_path_factory, comfyui_dir, comfy_python) -> Path:
    """checkpoints/, controlnet/, loras/ with random SD1.5-shaped files, made once per session (~2.8 GB, fp16, about
    a minute). KOSMOS_G_COMFY_MODELS=<dir> keeps them in <dir> across sessions (made there if missing)."""
    cached = os.environ.get("KOSMOS_G_COMFY_MODELS")
    if cached and (Path(cached) / "checkpoints" / SD15_NAME).is_file():
        return Path(cached)
    out = Path(cached) if cached else tmp_path_factory.mktemp("sd15_models")
    subprocess.run([comfy_python, str(HERE / "comfy_models.py"), str(comfyui_dir), str(out)], check=True,
                   cwd=str(comfyui_dir), timeout=600)
    return out


@pytest.fixture(scope="session")
def sdxl_models(tmp_path_factory, comfyui_dir, comfy_python) -> Path:
    """checkpoints/ and controlnet/ with random SDXL-shaped files (comfy_models.py --sdxl: ~3.8 GB fp16, about half a
    minute), kept in KOSMOS_G_COMFY_MODELS like the SD1.5 ones."""
    cached = os.environ.get("KOSMOS_G_COMFY_MODELS")
    if cached and (Path(cached) / "checkpoints" / SDXL_NAME).is_file():
        return Path(cached)
    out = Path(cached) if cached else tmp_path_factory.mktemp("sdxl_models")
    subprocess.run([comfy_python, str(HERE / "comfy_models.py"), str(comfyui_dir), str(out), "--sdxl"], check=True,
                   cwd=str(comfyui_dir), timeout=600)
    return out


def _save_tiny_kosmos_g(path: Path, tokenizer, with_aligner: bool = True, sdxl: bool = False) -> None:
    import dataclasses

    import torch

    from kosmos_g_core import KosmosG, KosmosGConfig, save_checkpoint

    torch.manual_seed(0)
    config = KosmosGConfig.tiny_sdxl() if sdxl else KosmosGConfig.tiny()
    if not with_aligner:
        config = dataclasses.replace(config, aligner=None)
    save_checkpoint(path, KosmosG(config).state_dict(), tokenizer, config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_png(path: Path, size: int = 96) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


class ComfyClient:
    """Minimal HTTP client of a ComfyUI server (POST /prompt, poll /history)."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path, base: Path):
        self.url = url
        self.process = process
        self.log_path = log_path
        self.base = base

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(self.url + route, timeout=60) as response:
            return json.load(response)

    def queue(self, prompt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"prompt": prompt, "client_id": "kosmos-g-tests"}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode() or "{}")

    def wait(self, prompt_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited (code {self.process.returncode}); log: {self.log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; log: {self.log_path}")

    def run(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """Queue and wait; returns the history entry (fails the test if validation refused it)."""
        status, answer = self.queue(prompt)
        assert status == 200, f"prompt refused at validation: {json.dumps(answer)[:2000]}"
        return self.wait(answer["prompt_id"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfyui_dir, comfy_python, sd15_models, sdxl_models, kosmos_tokenizer):
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    for folder in ("checkpoints", "controlnet", "loras"):
        (models / folder).mkdir(parents=True)
        for source in {sd15_models, sdxl_models}:  # the same folder when KOSMOS_G_COMFY_MODELS keeps both
            for file in (source / folder).glob("*"):
                if not (models / folder / file.name).exists():
                    (models / folder / file.name).symlink_to(file)
    # The layout workflows use a segmentation ControlNet: same SD1.5 ControlNet architecture, so the same random file.
    (models / "controlnet" / "control_v11p_sd15_seg_fp16.safetensors").symlink_to(
        sd15_models / "controlnet" / "control_v11p_sd15_canny_fp16.safetensors")
    kosmos_dir = models / "kosmos_g"
    kosmos_dir.mkdir()
    _save_tiny_kosmos_g(kosmos_dir / KOSMOS_G_NAME, kosmos_tokenizer)
    _save_tiny_kosmos_g(kosmos_dir / KOSMOS_G_SDXL_NAME, kosmos_tokenizer, sdxl=True)
    _save_tiny_kosmos_g(kosmos_dir / "kosmos2-mllm-only.safetensors", kosmos_tokenizer, with_aligner=False)
    # A new user's mistake: the SD1.5 checkpoint dropped into models/kosmos_g/.
    (kosmos_dir / "sd15-in-wrong-folder.safetensors").symlink_to(sd15_models / "checkpoints" / SD15_NAME)
    # Another: an official .pt dropped in unconverted (with the tokenizer files the convert command expects).
    load_test_helper("official_files").write_tiny_official(kosmos_dir / OFFICIAL_PT_NAME, kosmos_tokenizer)
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / "kosmos_g").symlink_to(REPO_ROOT, target_is_directory=True)
    shutil.copy(HERE / "comfy_probe_nodes.py", custom / "kosmos_g_test_probe.py")
    (base / "input").mkdir()
    _write_png(base / "input" / "example.png")

    port = _free_port()
    log_path = base / "comfyui.log"
    command = [comfy_python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--preview-method", "none"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=str(comfyui_dir), stdout=log_file, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}", process, log_path, base)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited during start-up (code {process.returncode}):\n{client.log()[-4000:]}")
            try:
                client.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not start within 180 s:\n{client.log()[-4000:]}")
                time.sleep(0.5)
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
