"""Writing webdataset tar shards: numbered ``{prefix}-{000000}.tar`` files of ``samples_per_shard`` samples each.

Samples are dicts ``{"__key__": key, "<suffix>": bytes | str | dict, ...}`` (str -> UTF-8, dict -> JSON). Keys
must not contain dots: webdataset splits a member name at its first dot into key and suffix.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image
from webdataset import TarWriter

log = logging.getLogger(__name__)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _encode(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"cannot store a {type(value).__name__} in a shard (expected bytes, str, dict or list)")


class ShardWriter:
    """Writes samples into numbered tar shards; a shard is written to ``.tmp`` and renamed when complete, so an
    interrupted build never leaves a truncated shard under a final name."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, samples_per_shard: int = 1000) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.paths: list[Path] = []
        self.count = 0
        self._writer: TarWriter | None = None
        self._in_shard = 0
        self._tmp: Path | None = None

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits names at dots)")
        if self._writer is None or self._in_shard >= self.samples_per_shard:
            self._open_next()
        assert self._writer is not None
        self._writer.write({"__key__": key, **{k: _encode(v) for k, v in sample.items() if k != "__key__"}})
        self._in_shard += 1
        self.count += 1

    def _open_next(self) -> None:
        self._close_current()
        final = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
        self._tmp = final.with_suffix(".tar.tmp")
        self._writer = TarWriter(str(self._tmp), encoder=False)
        self.paths.append(final)
        self._in_shard = 0

    def _close_current(self) -> None:
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            os.replace(self._tmp, self.paths[-1])
            log.info("wrote %s (%d samples)", self.paths[-1], self._in_shard)
        self._writer = None
        self._tmp = None

    def close(self) -> list[Path]:
        """Finish the last shard; returns the shard paths."""
        self._close_current()
        return list(self.paths)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
