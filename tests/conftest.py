"""Shared fixtures. No tests/__init__.py on purpose: ComfyUI has its own top-level `nodes` module, and tests are
collected with --import-mode=importlib so the repository root is never made a package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones main with shared/ beside it; KOSMOS_G_SHARED overrides for other layouts.
SHARED_DIR = Path(os.environ.get("KOSMOS_G_SHARED", REPO_ROOT.parent / "shared"))
TOKENIZER_DIR = SHARED_DIR / "data" / "kosmos_tokenizer"
DREAMBENCH_DIR = SHARED_DIR / "data" / "dreambench"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every model in the tests is tiny: intra-op threads only wait for each other (measured up to 50x slower with
    2 threads on a busy 2-core machine). Subprocesses (torchrun, ComfyUI) set their own."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if not (TOKENIZER_DIR / "sentencepiece.bpe.model").is_file():
        pytest.skip(f"the KOSMOS-G tokenizer files are not at {TOKENIZER_DIR} (set KOSMOS_G_SHARED)")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def dreambench_dir() -> Path:
    if not (DREAMBENCH_DIR / "images").is_dir():
        pytest.skip(f"the DreamBench images are not at {DREAMBENCH_DIR} (set KOSMOS_G_SHARED)")
    return DREAMBENCH_DIR


@pytest.fixture(scope="session")
def kosmos_tokenizer(tokenizer_dir):
    from kosmos_g_core.tokenizer import KosmosTokenizer

    return KosmosTokenizer.from_files(tokenizer_dir / "sentencepiece.bpe.model", tokenizer_dir / "dict.txt")
