"""The safetensors layout, read with plain file reads: the one header parser and tensor reader of the core.

Why not `safetensors.safe_open`: it memory-maps the file, and the mapped pages count in the process's resident
memory until the file is closed, so loading a 3.8 GB checkpoint (or converting a 6.7 GB fp32 Kosmos-2 file) would
hold the whole file besides the model. Here the header is parsed (and every tensor checked to lie inside the file)
without reading tensor data, and each tensor is `readinto` its destination, one at a time. The format itself
(8-byte little-endian header length, JSON header with `dtype`, `shape`, `data_offsets` and `__metadata__`) is the one
`safetensors` writes; the pack's own writer is `checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

MAX_HEADER = 100 * 1024 * 1024
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class SafetensorsFormatError(ValueError):
    """The file is not a (complete) .safetensors file; the message names it and what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """(tensor entries by name, metadata) of a .safetensors file, without reading tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsFormatError(f"{path} is {size} bytes long: too short to be a .safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_HEADER or 8 + n > size:
            raise SafetensorsFormatError(f"{path} is not a .safetensors file (or is truncated): bad header length {n}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"{path} is not a .safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path} is not a .safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            entry = TensorEntry(SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin,
                                data_start + end)
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"{path}: malformed .safetensors header entry for '{name}'") from None
        if entry.end > size:
            raise SafetensorsFormatError(
                f"{path} is truncated: tensor '{name}' ends at byte {entry.end} but the file has {size} bytes. "
                "Download or copy it again."
            )
        entries[name] = entry
    return entries, metadata


def read_tensor_bytes(f: BinaryIO, start: int, target: torch.Tensor) -> torch.Tensor:
    """Fill the contiguous CPU tensor `target` with the bytes of the open file from `start`; returns `target`."""
    buf = memoryview(target.detach().reshape(-1).view(torch.uint8).numpy())
    f.seek(start)
    filled = 0
    while filled < len(buf):
        n = f.readinto(buf[filled:])
        if not n:
            raise SafetensorsFormatError(f"{f.name}: unexpected end of file while reading a tensor")
        filled += n
    return target
