"""Layout tar shards: procedural scenes written as `{key}.txt`, `{key}.label.png`, `{key}.inst.png` (lossless PNG),
and the data set that reads them back (with `{key}.png`, the picture of the scene, when the shards have one: the
ControlNet stage trains on picture + layout + caption)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .scenes import make_scene


def write_shards(out_dir: str | Path, count: int, *, seed: int = 0, size: int = 64, per_shard: int = 1000) -> list[Path]:
    """Write `count` procedural scenes to tar shards `{out_dir}/layout-{k:06d}.tar`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, count, per_shard):
        path = out / f"layout-{start // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(count, start + per_shard)):
                sc = make_scene(seed, i, size)
                key = f"{seed:03d}{i:09d}"
                _add(tar, f"{key}.txt", sc.caption.encode())
                _add(tar, f"{key}.label.png", _png(sc.labels))
                _add(tar, f"{key}.inst.png", _png(sc.instances.clip(0, 255).astype(np.uint8)))
        paths.append(path)
    return paths


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class ShardLayouts(torch.utils.data.Dataset):
    """Samples of layout tar shards (lossless PNG label and instance maps, and the (S, S, 3) uint8 picture when the
    shard has `{key}.png`), loaded into memory."""

    def __init__(self, shards: Sequence[str | Path]):
        groups: dict[str, dict[str, bytes]] = {}
        for shard in shards:
            if not Path(shard).is_file():
                raise FileNotFoundError(f"layout shard {shard} not found")
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    key, _, ext = m.name.partition(".")
                    groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
        self.samples = []
        for key in sorted(groups):
            g = groups[key]
            if not {"txt", "label.png"} <= set(g):
                raise ValueError(f"layout shard sample {key} lacks .txt or .label.png")
            inst = np.asarray(Image.open(io.BytesIO(g["inst.png"])), dtype=np.int32) if "inst.png" in g else None
            sample = {"caption": g["txt"].decode(), "labels": np.asarray(Image.open(io.BytesIO(g["label.png"]))),
                      "instances": inst}
            if "png" in g:
                sample["picture"] = np.asarray(Image.open(io.BytesIO(g["png"])).convert("RGB"))
            self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def captions(self, limit: int) -> list[str]:
        return [sample["caption"] for sample in self.samples[:limit]]

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]
