"""The pack's checkpoint format: one `.safetensors` file with the weights, the config and the tokenizer.

Layout: model tensors under the official fairseq key names (the tied `output_projection` is not stored), the
tokenizer files as uint8 tensors `tokenizer.sentencepiece_model` and `tokenizer.dict`, and metadata
`{"format": "kosmos_g", "format_version": "2", "config": <json>}`. The stored config is the whole architecture, head
counts included: on load it is checked against the tensor shapes (`shape_mismatches`) and used as is, so a file loads
back to the model that wrote it. An SDXL file is the same format with the AlignerNet's SDXL heads among its tensors
(`aligner.context_proj.*`, `aligner.pooled_head.*`) and their widths in the config; the variant is told by those
tensors, never by the file name. Version 1 files stored head counts derived as one per 64 channels, which is also how
they were always loaded; a file without a config gets the same assumption, with a logged note.

Reading and writing go straight between the file and the tensors' memory: a load builds the model on the meta
device, allocates it once in the target dtype and `readinto`s each tensor, so peak memory stays at the model's size
plus one tensor (no second copy, no fp32 copy of a half-precision file).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import HEAD_DIM, KosmosGConfig, detect_config, shape_mismatches
from .layers import Ops
from .model import KosmosG
from .ops import CoreOps
from .safetensors_file import DTYPE_NAMES, SafetensorsFormatError, read_tensor_bytes
from .safetensors_file import TensorEntry as _Entry
from .safetensors_file import read_header as read_safetensors_header
from .tokenizer import KosmosTokenizer

log = logging.getLogger(__name__)

FORMAT = "kosmos_g"
FORMAT_VERSION = "2"  # "1": head counts in the config were derived, one per 64 channels
TOKENIZER_SPM_KEY = "tokenizer.sentencepiece_model"
TOKENIZER_DICT_KEY = "tokenizer.dict"


class CheckpointError(ValueError):
    """A file that is not a usable KOSMOS-G checkpoint; the message names the file and what was expected."""


class StableDiffusionFileError(CheckpointError):
    """The file is a Stable Diffusion checkpoint (U-Net + VAE + CLIP): it belongs with the SD models."""


class UNetWeightsFileError(CheckpointError):
    """The file holds U-Net, LoRA or ControlNet weights: it belongs with those."""


def _read_entries(path: Path) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Parse a safetensors header without reading tensor data; checks every tensor lies inside the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a PyTorch pickle (.pt/.ckpt), not the pack's .safetensors format. Official KOSMOS-G "
            "files are converted once with `python -m kosmos_g_core.convert`."
        )
    try:
        return read_safetensors_header(path)
    except SafetensorsFormatError as e:
        raise CheckpointError(str(e)) from None


def _foreign_file_error(path: Path, keys: list[str]) -> CheckpointError:
    """The error for a file of another kind: its type says which kind (callers advise on it), its text says so too."""
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        return StableDiffusionFileError(
            f"{path} is a Stable Diffusion checkpoint, not a KOSMOS-G checkpoint. Put it with your SD1.5 models; "
            "KOSMOS-G needs a file made by `python -m kosmos_g_core.convert` or exported by the trainer.")
    if any(k.startswith(("text_model.model.", "vision_model.model.")) for k in keys):
        return CheckpointError(f"{path} is a Hugging Face Kosmos-2 file. Convert its folder with "
                               "`python -m kosmos_g_core.convert --kosmos2 <folder> --out <file>` (then train stages "
                               "2-3).")
    if any(k.startswith(("down_blocks.", "up_blocks.", "lora_", "control_model.")) for k in keys):
        return UNetWeightsFileError(f"{path} holds U-Net/LoRA/ControlNet weights, not a KOSMOS-G checkpoint.")
    sample = ", ".join(sorted(keys)[:5])
    return CheckpointError(f"{path} is not a KOSMOS-G checkpoint (expected keys such as 'gpt_model.decoder.*'; "
                           f"found {sample}, ...)")


def read_header(path: str | os.PathLike) -> tuple[KosmosGConfig, dict[str, str]]:
    """The config (stored, checked against the tensor shapes) and metadata of a pack checkpoint, without reading weights."""
    path = Path(path)
    entries, metadata = _read_entries(path)
    return _config_from(path, entries, metadata), metadata


def heads_text(config: KosmosGConfig) -> str:
    """The head counts of a config, for log lines: 'vision 16, MLLM 32, connector 32, AlignerNet 12'."""
    text = f"vision {config.vision.heads}, MLLM {config.mllm.heads}, connector {config.connector.heads}"
    return text + (f", AlignerNet {config.aligner.heads}" if config.aligner is not None else "")


def conditioning_text(config: KosmosGConfig) -> str:
    """What a config conditions, for log lines and messages: 'SD1.5 conditioning (77 x 768)', 'SDXL conditioning
    (77 x 2048 context + 1280 pooled)' or 'MLLM only: no AlignerNet'."""
    if config.aligner is None:
        return "MLLM only: no AlignerNet"
    queries, width = config.condition_shape
    if config.aligner.is_sdxl:
        return f"SDXL conditioning ({queries} x {width} context + {config.aligner.pooled_dim} pooled)"
    return f"SD1.5 conditioning ({queries} x {width})"


def _stored_config(path: Path, metadata: Mapping[str, str]) -> KosmosGConfig | None:
    if "config" not in metadata:
        return None
    try:
        return KosmosGConfig.from_dict(json.loads(metadata["config"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        log.warning("%s: unreadable config metadata ignored (%s); the architecture comes from tensor shapes", path, e)
        return None


def _config_from(path: Path, entries: Mapping[str, _Entry], metadata: Mapping[str, str]) -> KosmosGConfig:
    keys = list(entries)
    if metadata.get("format") != FORMAT and not any(k.startswith("gpt_model.decoder.") for k in keys):
        raise _foreign_file_error(path, keys)
    stored = _stored_config(path, metadata)
    try:
        detected = detect_config({k: e.shape for k, e in entries.items()})
    except KeyError as e:
        raise CheckpointError(f"{path} is incomplete: tensor {e} is missing") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if stored is None:
        log.info("%s stores no usable config: head counts assumed at one per %d channels (%s)", path, HEAD_DIM,
                 heads_text(detected))
        return detected
    mismatches = shape_mismatches(stored, detected)
    if mismatches:
        raise CheckpointError(f"{path}: the config stored in the file does not match its tensors ("
                              + "; ".join(mismatches) + "). The file is damaged or was edited; re-export it.")
    if metadata.get("format_version") == "1":
        log.info("%s is a format-1 file: its head counts (%s) were derived at one per %d channels when it was "
                 "written, as they are read now", path, heads_text(stored), HEAD_DIM)
    return stored


def _check_keys(path: Path, model: nn.Module, entries: Mapping[str, _Entry]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: e.shape for k, e in entries.items() if not k.startswith("tokenizer.")}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in sorted(expected.keys() & found.keys())
             if found[k] != expected[k]]
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{path} does not match the KOSMOS-G architecture its shapes describe: "
                              + " | ".join(problems))


def _read_into(f, entry: _Entry, dest: torch.Tensor) -> None:
    """Read one tensor from the open file straight into `dest` (any device/dtype), with at most one temporary."""
    direct = dest.device.type == "cpu" and dest.dtype == entry.dtype and dest.is_contiguous()
    target = dest if direct else torch.empty(entry.shape, dtype=entry.dtype)
    try:
        read_tensor_bytes(f, entry.start, target)
    except SafetensorsFormatError as e:
        raise CheckpointError(str(e)) from None
    if not direct:
        with torch.no_grad():
            dest.copy_(target)


def _read_bytes(f, entry: _Entry) -> bytes:
    f.seek(entry.start)
    return f.read(entry.end - entry.start)


def _file_float_dtype(entries: Mapping[str, _Entry]) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for e in entries.values():
        if e.dtype.is_floating_point:
            counts[e.dtype] = counts.get(e.dtype, 0) + (e.end - e.start)
    return max(counts, key=counts.get) if counts else torch.float32


def load_checkpoint(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu", ops: Ops = CoreOps) -> KosmosG:
    """Load a pack checkpoint strictly. `dtype=None` keeps the file's precision. The tokenizer is attached."""
    path = Path(path)
    entries, metadata = _read_entries(path)
    config = _config_from(path, entries, metadata)
    dtype = dtype or _file_float_dtype(entries)
    for key in (TOKENIZER_SPM_KEY, TOKENIZER_DICT_KEY):
        if key not in entries:
            raise CheckpointError(f"{path} has no tokenizer ('{key}' is missing); re-export or re-convert it")

    with torch.device("meta"):
        model = KosmosG(config, dtype=dtype, ops=ops)
    _check_keys(path, model, entries)
    model.to_empty(device=device)
    params = model.state_dict(keep_vars=True)
    with open(path, "rb") as f:
        for name in sorted(params, key=lambda k: entries[k].start):  # sequential reads
            _read_into(f, entries[name], params[name])
        try:
            model.tokenizer = KosmosTokenizer.from_bytes(_read_bytes(f, entries[TOKENIZER_SPM_KEY]),
                                                         _read_bytes(f, entries[TOKENIZER_DICT_KEY]))
        except (ValueError, RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: the embedded tokenizer is unreadable ({e})") from None
    log.info("Loaded KOSMOS-G from %s (%s, %s, %s)", path, dtype, device, conditioning_text(config))
    return model.eval()


def _tensor_bytes(t: torch.Tensor):
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Stream tensors to a .safetensors file (no in-memory copy of the whole file); atomic via rename.

    `dtype` casts floating tensors one at a time while writing."""
    path = Path(path)

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    header: dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * out_dtype(t).itemsize
        header[name] = {"dtype": DTYPE_NAMES[out_dtype(t)], "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(_tensor_bytes(t.to(out_dtype(t))))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | KosmosG,
                    tokenizer: KosmosTokenizer | None = None, config: KosmosGConfig | None = None,
                    dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> KosmosGConfig:
    """Write the pack format. `state_dict` uses the official key names (a KosmosG module is accepted too).

    `config` (a module's own by default) is stored whole, after checking it against the tensor shapes; without one
    the head counts are assumed (one per 64 channels). Floating tensors are cast to `dtype` when given. Returns the
    stored config.
    """
    if isinstance(state_dict, KosmosG):
        tokenizer = tokenizer or state_dict.tokenizer
        config = config or state_dict.config
        state_dict = state_dict.state_dict()
    if tokenizer is None:
        raise ValueError("save_checkpoint needs the tokenizer: the pack's file embeds it")
    state_dict = {k: v for k, v in state_dict.items() if k != "gpt_model.decoder.output_projection.weight"}
    detected = detect_config({k: tuple(v.shape) for k, v in state_dict.items()})
    if config is None:
        config = detected
        log.info("save_checkpoint got no config: head counts assumed at one per %d channels (%s)", HEAD_DIM,
                 heads_text(config))
    mismatches = shape_mismatches(config, detected)
    if mismatches:
        raise ValueError(f"save_checkpoint {path}: the config does not match the tensors: " + "; ".join(mismatches))
    tensors = dict(state_dict)
    tensors[TOKENIZER_SPM_KEY] = torch.frombuffer(bytearray(tokenizer.spm_bytes), dtype=torch.uint8)
    tensors[TOKENIZER_DICT_KEY] = torch.frombuffer(bytearray(tokenizer.dict_bytes), dtype=torch.uint8)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(config.to_dict())}
    meta.update(metadata or {})
    write_safetensors(path, tensors, meta, dtype=dtype)
    log.info("Saved KOSMOS-G checkpoint %s", path)
    return config
