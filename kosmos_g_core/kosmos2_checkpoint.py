"""Reading a Hugging Face Kosmos-2 folder as an MLLM-only KOSMOS-G state dict (the practical stage-1 start).

Kosmos-2 (`microsoft/kosmos-2-patch14-224`) shares KOSMOS-G's MLLM, vision tower, resampler and tokenizer
(transformers' `convert_kosmos2_original_pytorch_checkpoint_to_pytorch.py`). Its `model.safetensors` (one file or shards listed in `model.safetensors.index.json`) is renamed to the
official fairseq names the pack uses; its vocabulary of 65037 rows (KOSMOS-G's 64007 + 1030 grounding tokens) is cut
to the first 64007 rows. There is no AlignerNet: stages 2 and 3 train it.

Tensors are streamed: each is read with plain file reads (no memory map), renamed, sliced and cast on its own, so
converting the 6.66 GB fp32 file holds at most the output plus one tensor in memory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from .official_checkpoint import EMBED_KEY, ConversionError
from .safetensors_file import SafetensorsFormatError, read_header, read_tensor_bytes
from .tokenizer import TokenizerError, dict_from_sentencepiece

log = logging.getLogger(__name__)

__all__ = ["hf_to_official_key", "kosmos2_tokenizer_bytes", "read_kosmos2_state_dict"]

KOSMOS_G_VOCAB = 64007  # fairseq dictionary of KOSMOS-G; Kosmos-2 appends its grounding tokens after it
HF_TIED_OUTPUT_KEY = "text_model.lm_head.weight"

# Prefix renames, HF -> official (the HF converter's table read backwards).
_PREFIXES = (
    ("text_model.model.", "gpt_model.decoder."),
    ("image_to_text_projection.", "img_connector."),
    ("vision_model.model.embeddings.class_embedding", "img_model.visual.class_embedding"),
    ("vision_model.model.embeddings.patch_embedding.", "img_model.visual.conv1."),
    ("vision_model.model.embeddings.position_embedding.weight", "img_model.visual.positional_embedding"),
    ("vision_model.model.pre_layrnorm.", "img_model.visual.ln_pre."),
    ("vision_model.model.post_layernorm.", "img_model.visual.ln_post."),
    ("vision_model.model.encoder.layers.", "img_model.visual.transformer.resblocks."),
)
# Inside a vision block: HF CLIP names -> open_clip/torchscale names.
_VISION_BLOCK = (
    (".self_attn.", ".ts_attn."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)
# Buffers that older transformers versions saved: recomputed by the model, never weights.
_IGNORED = re.compile(r"vision_model\.model\.embeddings\.position_ids|text_model\.model\.embed_positions\.(weights|_float_tensor)")


def hf_to_official_key(key: str) -> str | None:
    """The official name of a HF Kosmos-2 key; None for buffers to drop; raises for anything unknown."""
    if _IGNORED.fullmatch(key) or key == HF_TIED_OUTPUT_KEY:
        return None
    for hf, official in _PREFIXES:
        if key.startswith(hf):
            new = official + key[len(hf) :]
            if official == "img_model.visual.transformer.resblocks.":
                for a, b in _VISION_BLOCK:
                    new = new.replace(a, b)
            return new
    raise KeyError(key)


def _weight_files(folder: Path) -> dict[str, Path]:
    """key -> safetensors file, for a single `model.safetensors` or a sharded checkpoint with its index."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise ConversionError(f"{index}: not a safetensors index (expected a 'weight_map'): {e}") from None
        files = {k: folder / v for k, v in weight_map.items()}
        missing = sorted({str(p) for p in files.values() if not p.is_file()})
        if missing:
            raise ConversionError(f"{index}: lists shards that are not in the folder: {missing}")
        return files
    if single.is_file():
        return {}  # filled from the file's own header by the caller
    raise ConversionError(
        f"{folder}: no model.safetensors or model.safetensors.index.json; expected a Hugging Face Kosmos-2 folder "
        "(e.g. a download of microsoft/kosmos-2-patch14-224)."
    )


class _SafetensorsReader:
    """Reads tensors of a .safetensors file with plain reads, one at a time (safetensors_file: not mmap, whose pages
    would count in resident memory, so converting a 6.66 GB fp32 file would hold the whole source besides the
    output)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._entries = read_header(path)[0]
        except SafetensorsFormatError as e:
            raise ConversionError(str(e)) from None
        self._file = open(path, "rb")  # closed by close() or the context manager

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key].shape

    def read(self, key: str, rows: int | None = None) -> torch.Tensor:
        """The tensor `key`, or only its first `rows` rows (row-major, so they are the first bytes)."""
        entry = self._entries[key]
        shape = entry.shape if rows is None else (min(rows, entry.shape[0]), *entry.shape[1:])
        try:
            return read_tensor_bytes(self._file, entry.start, torch.empty(shape, dtype=entry.dtype))
        except SafetensorsFormatError as e:
            raise ConversionError(f"{e} ('{key}')") from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iter_tensors(folder: Path) -> Iterator[tuple[str, Path, _SafetensorsReader]]:
    """(key, file, reader) for every tensor of the folder, one file open at a time."""
    files = _weight_files(folder)
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    if not files:
        by_file[folder / "model.safetensors"] = []
    for path, keys in by_file.items():
        with _SafetensorsReader(path) as reader:
            for key in keys or reader.keys():
                yield key, path, reader


def read_kosmos2_state_dict(
    folder: str | Path, dtype: torch.dtype | None = None, vocab_size: int = KOSMOS_G_VOCAB
) -> dict[str, torch.Tensor]:
    """The MLLM-only pack state dict (official names) of a HF Kosmos-2 folder, cast to `dtype` tensor by tensor."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a folder; expected a Hugging Face Kosmos-2 folder with model.safetensors")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    located: dict[str, Path] = {}
    for key, path, handle in _iter_tensors(folder):
        located[key] = path
        try:
            new = hf_to_official_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if new == EMBED_KEY:
            rows = handle.shape(key)[0]
            if rows < vocab_size:
                raise ConversionError(
                    f"{path}: {key} has {rows} rows, fewer than KOSMOS-G's {vocab_size}-token vocabulary; "
                    "this is not a Kosmos-2 text model."
                )
            tensor = handle.read(key, rows=vocab_size)  # reads only the kept rows
        else:
            tensor = handle.read(key)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[new] = tensor
    if unknown:
        raise ConversionError(
            f"{folder}: {len(unknown)} keys that are not Kosmos-2 weights, e.g. {unknown[:8]}; expected keys under "
            "text_model.model., vision_model.model. and image_to_text_projection."
        )
    if EMBED_KEY not in out:
        raise ConversionError(f"{folder}: no text_model.model.embed_tokens.weight; this is not a Kosmos-2 checkpoint.")
    if HF_TIED_OUTPUT_KEY in located:
        _check_tied(located[HF_TIED_OUTPUT_KEY], located["text_model.model.embed_tokens.weight"], vocab_size)
    log.info("read %d tensors from %s (vocabulary cut to %d rows)", len(out), folder, vocab_size)
    return out


def _check_tied(head_file: Path, embed_file: Path, vocab_size: int) -> None:
    """The saved lm_head must equal the token embedding (Kosmos-2 ties them); the pack stores only the embedding."""
    with _SafetensorsReader(head_file) as h, _SafetensorsReader(embed_file) as e:
        head = h.read(HF_TIED_OUTPUT_KEY, rows=vocab_size)
        embed = e.read("text_model.model.embed_tokens.weight", rows=vocab_size)
    if not torch.equal(head, embed):
        raise ConversionError(
            f"{head_file}: {HF_TIED_OUTPUT_KEY} differs from the token embedding; Kosmos-2 ties them, so this is "
            "not a Kosmos-2 checkpoint (or it is damaged)."
        )


def kosmos2_tokenizer_bytes(
    folder: str | Path, spm_path: str | Path | None = None, dict_path: str | Path | None = None
) -> tuple[bytes, bytes]:
    """(sentencepiece model, dict.txt) for a Kosmos-2 folder: the given files, else the folder's, else a dict.txt
    rebuilt from the sentencepiece model (HF folders do not ship one)."""
    folder = Path(folder)
    spm_file = Path(spm_path) if spm_path else folder / "sentencepiece.bpe.model"
    if not spm_file.is_file():
        raise ConversionError(
            f"{spm_file}: no sentencepiece model; a Kosmos-2 folder has `sentencepiece.bpe.model` (or pass --spm)."
        )
    spm_bytes = spm_file.read_bytes()
    dict_file = Path(dict_path) if dict_path else folder / "dict.txt"
    if dict_file.is_file():
        return spm_bytes, dict_file.read_bytes()
    if dict_path:
        raise ConversionError(f"{dict_file}: no such file (expected the fairseq dict.txt)")
    log.info("%s has no dict.txt: rebuilding it from %s", folder, spm_file.name)
    try:
        return spm_bytes, dict_from_sentencepiece(spm_bytes)  # byte-identical to the official dict.txt
    except TokenizerError as e:
        raise ConversionError(f"{spm_file}: {e}") from None
