"""MS-COCO zero-shot FID: 30k captions of val2014, one image each, against the real images of those captions.

Caption selection: images of `captions_val2014.json` shuffled with `seed`, the first `count` images, one of each
image's captions chosen with the same seed (KOSMOS-G samples 30k val2014 captions; the exact list is not released).
Real images: the same COCO images, short side resized to `resolution` (bicubic) and centre-cropped, so both sets have
the same size before the feature extractor resizes them.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from kosmos_g_core.image import resize_and_crop
from training.cli import progress

from .images import load_rgb
from .report import claim_output, save_image, write_json
from .sampler import DiffusionSampler, SamplerSettings, to_pil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoItem:
    image_id: int
    file_name: str
    caption: str


def load_captions(path: str | Path, count: int = 30000, seed: int = 0) -> list[CocoItem]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file not found: {path} (expected annotations/captions_val2014.json)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: expected a COCO captions file with 'images' and 'annotations'")
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[int(ann["image_id"])].append(str(ann["caption"]).strip())
    images = sorted((img for img in data["images"] if captions.get(int(img["id"]))), key=lambda i: int(i["id"]))
    rng = random.Random(seed)
    rng.shuffle(images)
    if len(images) < count:
        log.warning("%s has %d captioned images, fewer than the %d asked for", path, len(images), count)
    return [CocoItem(int(img["id"]), img["file_name"], rng.choice(sorted(captions[int(img["id"])])))
            for img in images[:count]]


def generate(model, sampler: DiffusionSampler, items: Sequence[CocoItem], out_dir: str | Path,
             settings: SamplerSettings, seed: int = 0, batch: int = 8, identity: Mapping | None = None) -> Path:
    """One image per caption into <out_dir>/samples/<index:05d>.png.

    Resumable: a batch whose images are all there is skipped, and the noise of a batch depends only on its start, so
    a resumed run ends with the same images as an uninterrupted one. The batch size, settings, seed and `identity`
    (checkpoint, SD1.5 folder...) go to out_dir/generation.json, which a resumed run must match."""
    folder = Path(out_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    claim_output(out_dir, {"benchmark": "coco-fid", "settings": asdict(settings), "seed": seed, "batch": batch,
                           "count": len(items), **(identity or {})})
    starts = range(0, len(items), batch)
    made = 0
    for start in progress(starts, desc=f"COCO generation (batches of {batch})"):
        chunk = items[start : start + batch]
        paths = [folder / f"{start + i:05d}.png" for i in range(len(chunk))]
        if all(p.is_file() for p in paths):
            continue
        encoded = model.encode([it.caption for it in chunk])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        images = sampler.sample(encoded.cond, encoded.uncond, settings.steps, settings.guidance, settings.resolution,
                                generator)
        for img, p in zip(to_pil(images), paths, strict=True):
            if not p.is_file():  # the batch's other images are already there, and equal to these
                save_image(img, p)
        made += 1
    log.info("COCO: %d batches generated, %d already in %s", made, len(starts) - made, folder)
    write_json({"settings": asdict(settings), "seed": seed,
                "captions": [asdict(it) | {"file": f"samples/{i:05d}.png"} for i, it in enumerate(items)]},
               Path(out_dir) / "manifest.json")
    return folder


def generated_images(out_dir: str | Path, count: int) -> Iterator[Image.Image]:
    folder = Path(out_dir) / "samples"
    for i in range(count):
        yield load_rgb(folder / f"{i:05d}.png")


def real_images(images_dir: str | Path, items: Sequence[CocoItem], resolution: int) -> Iterator[Image.Image]:
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: {images_dir} (expected the val2014/ folder)")
    for it in items:
        yield resize_and_crop(load_rgb(images_dir / it.file_name), resolution)
