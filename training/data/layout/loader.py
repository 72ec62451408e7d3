"""Batches of the layout stages: the data set a `[data]` table names, collation, and the resumable loader.

Text-to-layout batches (`collate`): captions list[str], labels (B,S,S) long (255 ignored), instances (B,S,S) long or
None. ControlNet batches (`ControlNetCollate`) add pictures (B,3,S,S) in [-1, 1] and hints (B,3,S,S) in [0, 1], the
label map rendered in the ControlNet's palette.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .config import LayoutDataConfig
from .datasets import CocoStuffLayouts, ProceduralLayouts
from .shards import ShardLayouts


def build_dataset(data: LayoutDataConfig) -> torch.utils.data.Dataset:
    """The data set of `[data] source`."""
    if data.source == "procedural":
        return ProceduralLayouts(data.train_scenes, data.seed, data.size)
    if data.source == "coco_stuff":
        return CocoStuffLayouts(data.captions, data.labels, size=data.size, limit=data.limit)
    return ShardLayouts(list(data.shards))


def collate(samples: Sequence[dict]) -> dict:
    labels = torch.from_numpy(np.stack([s["labels"] for s in samples]).astype(np.int64))
    inst = None
    if all(s["instances"] is not None for s in samples):
        inst = torch.from_numpy(np.stack([s["instances"] for s in samples]).astype(np.int64))
    return {"captions": [s["caption"] for s in samples], "labels": labels, "instances": inst}


class ControlNetCollate:
    """Picture, layout hint (the label map in `palette`'s colours, as a segmentation ControlNet is given it), label
    map and caption of each sample."""

    def __init__(self, palette: str):
        from kosmos_g_core.layout.palettes import get_palette

        self.palette = get_palette(palette)

    def __call__(self, samples: Sequence[dict]) -> dict:
        if any("picture" not in s for s in samples):
            raise ValueError("the ControlNet stage needs pictures: layout shards with a {key}.png per sample "
                             "(training.layout_world.shards writes them)")
        batch = collate(samples)
        pictures = np.stack([s["picture"] for s in samples]).astype(np.float32) / 127.5 - 1.0  # (B, S, S, 3)
        hints = np.stack([self.palette.render(s["labels"]) for s in samples]).astype(np.float32) / 255.0
        batch["pictures"] = torch.from_numpy(pictures).permute(0, 3, 1, 2)
        batch["hints"] = torch.from_numpy(hints).permute(0, 3, 1, 2)
        return batch


class LayoutLoader:
    """Infinite, deterministic batches over a data set (reshuffled each epoch from seed + epoch), sharded by rank,
    with an exact resume position (state_dict / load_state_dict), as the trainer's StatefulLoader contract asks."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, collate_fn=collate):
        if len(dataset) < batch_size * world_size:
            raise ValueError(f"the layout data set has {len(dataset)} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self.stats: dict[str, int] = {}

    def _order(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict]:
        while True:
            order = self._order()
            while self.position + self.batch_size <= len(order):
                idx = order[self.position : self.position + self.batch_size]
                self.position += self.batch_size
                yield self.collate_fn([self.dataset[int(i)] for i in idx])
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.position = int(d["epoch"]), int(d["position"])
