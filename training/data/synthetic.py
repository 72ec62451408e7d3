"""Tiny synthetic shards of every kind, for tests and smoke runs (no data set needed).

``write_synthetic_shards(out_dir, kind, num_samples)`` writes valid shards in the formats of ``docs/data.md``
with small coloured images; the content is a deterministic function of the sample index.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .writer import ShardWriter, encode_jpeg, encode_png

KINDS = ("text", "captions", "interleaved", "editing", "compositional")

_NOUNS = ("dog", "cat", "ball", "chair", "tree", "car", "cup", "hat")
_PLACES = ("on the beach", "in a park", "on a table", "in the snow")


def _picture(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def synthetic_sample(kind: str, index: int, image_size: tuple[int, int] = (48, 40)) -> dict[str, object]:
    """One sample of ``kind`` (see module docstring); key ``s{index:06d}``."""
    rng = random.Random(f"synthetic/{kind}/{index}")
    key = f"s{index:06d}"
    first, second = rng.sample(_NOUNS, 2)
    place = rng.choice(_PLACES)
    if kind == "text":
        return {"__key__": key, "txt": f"The {first} sat next to the {second} {place}. Document {index}."}
    if kind == "captions":
        return {"__key__": key, "jpg": encode_jpeg(_picture(rng, image_size)), "txt": f"a {first} {place} {index}"}
    if kind == "interleaved":
        return {
            "__key__": key,
            "json": {"segments": [f"Here is a {first}:", {"image": 0}, f" and a {second}", {"image": 1}, "."]},
            "0.jpg": encode_jpeg(_picture(rng, image_size)),
            "1.jpg": encode_jpeg(_picture(rng, image_size)),
        }
    if kind == "editing":
        return {
            "__key__": key,
            "src.jpg": encode_jpeg(_picture(rng, image_size)),
            "tgt.jpg": encode_jpeg(_picture(rng, image_size)),
            "json": {"input_caption": f"a {first} {place}", "edit": f"turn the {first} into a {second}"},
        }
    if kind == "compositional":
        caption = f"a {first} and a {second} {place}"
        full = _picture(rng, (image_size[0], image_size[0]))
        sample: dict[str, object] = {"__key__": key, "jpg": encode_jpeg(full)}
        entities = []
        side = image_size[0]
        for i, name in enumerate((first, second)):
            start = caption.index(f" {name}") + 1
            entities.append({"name": name, "span": [start, start + len(name)]})
            mask = Image.new("L", (side, side), 0)
            box = (i * side // 2, side // 4, i * side // 2 + side // 2, 3 * side // 4)
            ImageDraw.Draw(mask).ellipse(box, fill=255)
            crop = full.crop(box).resize((32, 32))
            cut = Image.composite(full, Image.new("RGB", full.size, (255, 255, 255)), mask).crop(box).resize((32, 32))
            sample[f"ent{i}.crop.jpg"] = encode_jpeg(crop)
            sample[f"ent{i}.cut.png"] = encode_png(cut)
            sample[f"ent{i}.mask.png"] = encode_png(mask)
        sample["json"] = {"caption": caption, "entities": entities}
        return sample
    raise ValueError(f"unknown shard kind {kind!r}; expected one of {KINDS}")


def write_synthetic_shards(
    out_dir: str | os.PathLike, kind: str, num_samples: int, samples_per_shard: int = 4, start: int = 0
) -> list[Path]:
    """Write ``num_samples`` synthetic samples of ``kind`` into ``out_dir/{kind}-NNNNNN.tar``; returns the paths."""
    with ShardWriter(out_dir, kind, samples_per_shard) as writer:
        for index in range(start, start + num_samples):
            writer.write(synthetic_sample(kind, index))
    return writer.paths
