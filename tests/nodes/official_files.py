"""A tiny official-format KOSMOS-G file for the node tests (the converter's own tests build theirs from the
reference's key tree in tests/core/test_convert.py)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_official(path: Path, tokenizer) -> None:
    """A tiny KOSMOS-G file as fairseq saves it ({"model": state dict}, fp16, tied output head), with the official
    tokenizer files beside it, where the loader's convert command expects them."""
    from kosmos_g_core import KosmosG, KosmosGConfig

    torch.manual_seed(0)
    state = {k: v.half() for k, v in KosmosG(KosmosGConfig.tiny()).state_dict().items()}
    state["gpt_model.decoder.output_projection.weight"] = state["gpt_model.decoder.embed_tokens.weight"]
    torch.save({"model": state}, path)
    (path.parent / "sentencepiece.bpe.model").write_bytes(tokenizer.spm_bytes)
    (path.parent / "dict.txt").write_bytes(tokenizer.dict_bytes)
