"""The three layout data sets; each sample is {caption: str, labels: (S,S) uint8 (255 ignored), instances: (S,S)
ints or None}, and each data set lists its captions without decoding label maps (`captions(limit)`, for the word
vocabulary).

* ProceduralLayouts: the built-in scenes of `scenes.py`.
* CocoStuffLayouts: COCO-Stuff 164k from local files, one sample per caption.
* ShardLayouts: tar shards written by `shards.write_shards`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kosmos_g_core.layout.labels import raw_to_contiguous

from .scenes import Scene, make_scene


class ProceduralLayouts(torch.utils.data.Dataset):
    """`length` procedural scenes of data set `seed`, generated on first access and cached in memory."""

    def __init__(self, length: int, seed: int = 0, size: int = 64):
        self.length, self.seed, self.size = length, seed, size
        self._cache: dict[int, Scene] = {}

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        if i not in self._cache:
            sc = make_scene(self.seed, i, self.size)
            if sc.instances.max() < 256:  # a quarter of the memory for the cache (ids are small)
                sc = Scene(sc.caption, sc.labels, sc.instances.astype(np.uint8), sc.counts)
            self._cache[i] = sc
        return self._cache[i]

    def captions(self, limit: int) -> list[str]:
        return [self.scene(i).caption for i in range(min(limit, self.length))]

    def __getitem__(self, i: int) -> dict:
        sc = self.scene(i)
        return {"caption": sc.caption, "labels": sc.labels, "instances": sc.instances}


class CocoStuffLayouts(torch.utils.data.Dataset):
    """COCO-Stuff 164k from local files: one sample per caption.

    captions_json: COCO `captions_{split}2017.json`; stuffthingmaps_dir: the folder with `<image stem>.png` label
    maps (values = COCO id - 1, 255 unlabelled). Label maps: short side resized (nearest) to `size`, centre crop.
    """

    def __init__(self, captions_json: str | Path, stuffthingmaps_dir: str | Path, size: int = 64,
                 limit: int | None = None):
        captions_json, folder = Path(captions_json), Path(stuffthingmaps_dir)
        if not captions_json.is_file():
            raise FileNotFoundError(f"COCO captions file {captions_json} not found (expected captions_train2017.json)")
        if not folder.is_dir():
            raise FileNotFoundError(f"COCO-Stuff label folder {folder} not found (expected stuffthingmaps_trainval2017/"
                                    "train2017 with one <image id>.png per image)")
        data = json.loads(captions_json.read_text())
        stems = {img["id"]: Path(img["file_name"]).stem for img in data["images"]}
        self.items = []
        for ann in data["annotations"]:
            png = folder / f"{stems[ann['image_id']]}.png"
            self.items.append((ann["caption"].strip(), png))
            if limit and len(self.items) >= limit:
                break
        if not self.items:
            raise ValueError(f"{captions_json}: no captions found")
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def captions(self, limit: int) -> list[str]:
        return [caption for caption, _ in self.items[:limit]]

    def __getitem__(self, i: int) -> dict:
        caption, png = self.items[i]
        if not png.is_file():
            raise FileNotFoundError(f"COCO-Stuff label map {png} is missing (caption #{i})")
        raw = Image.open(png)
        w, h = raw.size
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        raw = raw.resize((nw, nh), Image.NEAREST)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        arr = np.asarray(raw.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)
        return {"caption": caption, "labels": raw_to_contiguous(arr), "instances": None}
