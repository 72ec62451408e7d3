"""Shared fixtures. No tests/__init__.py on purpose: ComfyUI has its own top-level `nodes` module, and tests are
collected with --import-mode=importlib so the repository root is never made a package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repository carries what its tests read (tests/data/README.md): a fresh clone tests itself, nothing beside it.
TOKENIZER_DIR = REPO_ROOT / "kosmos_g_core" / "assets" / "kosmos_tokenizer"
DREAMBENCH_DIR = REPO_ROOT / "tests" / "data" / "dreambench"


def _required(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """`folder`, after checking it holds `names`: missing test data fails the test (never a silent skip)."""
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        pytest.fail(f"{what}: {', '.join(missing)} missing from {folder} (they are part of the repository; "
                    "restore them with git checkout)", pytrace=False)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every model in the tests is tiny: intra-op threads only wait for each other (measured up to 50x slower with
    2 threads on a busy 2-core machine). Subprocesses (torchrun, ComfyUI) set their own. Set again after every test,
    because some call the toy world's `set_threads`: a test process left with an OpenMP pool of more than one thread
    makes the forked DDP ranks of the next tests (test_train_distributed.py) hang in their first parallel region."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return _required(TOKENIZER_DIR, ("sentencepiece.bpe.model", "dict.txt"), "the KOSMOS-G tokenizer files")


@pytest.fixture(scope="session")
def dreambench_dir() -> Path:
    return _required(DREAMBENCH_DIR, ("prompts_and_classes.txt", "images/dog.jpg"), "the DreamBench test data")


@pytest.fixture(scope="session")
def kosmos_tokenizer(tokenizer_dir):
    from kosmos_g_core.tokenizer import KosmosTokenizer

    return KosmosTokenizer.from_files(tokenizer_dir / "sentencepiece.bpe.model", tokenizer_dir / "dict.txt")
