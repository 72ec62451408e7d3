"""Build stage-3 webdataset shards from a folder of images (compositional) and InstructPix2Pix triples (editing).

    python -m training.build_shards --images DIR --out OUT_DIR --captioner PATH --segmenter PATH \\
        [--entity-llm PATH] [--captions captions.jsonl] [--ip2p DIR_or_jsonl] [--shard-size 1000] [--device cuda]

Compositional data, as the official builder made it from Open Images: each image is centre-cropped to a square,
captioned (a local image-to-text model, or ``--captions`` when you already have captions), its foreground entities
are extracted from the caption (a local instruction LLM, or the built-in rule-based extractor), each entity is
segmented with CLIPSeg (threshold 0.3, dilation, largest connected component) and written as its square crop with
background, its white-background cut-out and its full-image mask. Images without any segmented entity are skipped,
as in the official builder. Editing data: (input image, edited image, input caption, edit instruction) triples.

Output: ``OUT_DIR/compositional/compositional-NNNNNN.tar``, ``OUT_DIR/editing/editing-NNNNNN.tar`` and
``OUT_DIR/build_report.json`` (counts, also printed). Unreadable images are skipped and counted, never fatal.
Models load from local folders only (see docs/data.md for where to get them).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from training.cli import progress, setup_logging
from training.data.captioner import ImageCaptioner, read_captions
from training.data.entity_extractor import LLMEntityExtractor, RuleEntityExtractor
from training.data.local_models import ModelFolderError
from training.data.segmenter import ClipSegSegmenter, entity_crops
from training.data.writer import ShardWriter, encode_jpeg, encode_png

log = logging.getLogger("training.build_shards")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, so keys are stable across rebuilds."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder (expected a folder of images)")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def open_rgb(path: Path) -> Image.Image:
    """A fully decoded RGB image with its EXIF rotation applied; raises OSError/ValueError when unreadable."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def center_square(image: Image.Image, max_side: int) -> Image.Image:
    """The central square (as the official builder), downscaled to ``max_side`` when larger (bounds memory)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((max_side, max_side), Image.BICUBIC) if side > max_side else square


def entity_span(caption: str, name: str) -> list[int]:
    """[start, end) of the name in the caption: first whole-word match (case-insensitive), else first substring."""
    match = re.search(r"\b" + re.escape(name) + r"\b", caption, re.IGNORECASE)
    if match is None:
        start = caption.lower().find(name.lower())
        return [start, start + len(name)] if start >= 0 else [-1, -1]
    return [match.start(), match.end()]


@dataclass
class CompositionalBuilder:
    """Turns one image into one compositional sample (or a skip reason)."""

    segmenter: Callable[[Image.Image, Sequence[str]], list]
    extractor: Callable[[str], list[str]]
    captioner: Callable[[Sequence[Image.Image]], list[str]] | None = None
    captions: dict[str, str] | None = None
    size: int = 512

    def caption_for(self, relative: str, square: Image.Image) -> str | None:
        if self.captions is not None:
            found = self.captions.get(relative) or self.captions.get(Path(relative).name)
            if found:
                return found
        if self.captioner is not None:
            return self.captioner([square])[0]
        return None

    def sample(self, key: str, relative: str, image: Image.Image) -> tuple[dict | None, str]:
        """(sample dict, "written") or (None, skip reason)."""
        square = center_square(image, max_side=2 * self.size)
        caption = self.caption_for(relative, square)
        if not caption:
            return None, "skipped_no_caption"
        names = [n for n in self.extractor(caption) if n and n.lower() in caption.lower()]
        if not names:
            return None, "skipped_no_entities"
        masks = self.segmenter(square, names)
        kept = [(name, mask) for name, mask in zip(names, masks, strict=True) if mask is not None]
        if not kept:
            return None, "skipped_no_masks"
        full = square.resize((self.size, self.size), Image.BICUBIC)
        sample: dict = {"__key__": key, "jpg": encode_jpeg(full)}
        entities = []
        for i, (name, mask) in enumerate(kept):
            crop, cut = entity_crops(square, mask, self.size)
            full_mask = Image.fromarray(mask.astype("uint8") * 255, mode="L").resize((self.size, self.size))
            sample[f"ent{i}.crop.jpg"] = encode_jpeg(crop)
            sample[f"ent{i}.cut.png"] = encode_png(cut)
            sample[f"ent{i}.mask.png"] = encode_png(full_mask.point(lambda v: 255 if v >= 128 else 0))
            entities.append({"name": name, "span": entity_span(caption, name)})
        sample["json"] = {"caption": caption, "entities": entities, "image": relative}
        return sample, "written"


def build_compositional(
    images_dir: Path, out_dir: Path, builder: CompositionalBuilder, shard_size: int, seed: int = 0
) -> tuple[Counter, list[Path]]:
    """Write ``out_dir/compositional-NNNNNN.tar``; returns the counts and the shard paths.

    Images are written in a seeded random order: the loader reads each shard in order, so the shuffle happens here.
    """
    counts: Counter = Counter()
    paths = list_images(images_dir)
    random.Random(f"compositional/{seed}").shuffle(paths)
    counts["images_found"] = len(paths)
    with ShardWriter(out_dir, "compositional", shard_size) as writer:
        for index, path in enumerate(progress(paths, desc="compositional shards (images)")):
            relative = path.relative_to(images_dir).as_posix()
            try:
                image = open_rgb(path)
            except Exception as err:  # PIL raises many types for broken files; all mean "skip this image"
                counts["skipped_unreadable"] += 1
                log.warning("skipping unreadable image %s: %s", path, err)
                continue
            try:
                sample, outcome = builder.sample(f"{index:08d}", relative, image)
            except Exception:  # one odd image must not end a long build; the report shows how many failed
                log.exception("skipping %s: captioning, entity extraction or segmentation failed", path)
                sample, outcome = None, "skipped_error"
            counts[outcome] += 1
            if sample is not None:
                counts["entities"] += len(sample["json"]["entities"])
                writer.write(sample)
    log.info("compositional: %d images, %s", len(paths), dict(counts))
    return counts, writer.paths


@dataclass(frozen=True)
class EditRecord:
    """One InstructPix2Pix-style triple: input image, edited image, input caption, edit instruction."""

    name: str
    source: Path
    target: Path
    input_caption: str
    edit: str


_SOURCE_KEYS = ("input_image", "source_image", "src", "input")
_TARGET_KEYS = ("edited_image", "target_image", "tgt", "output_image", "edited")
_CAPTION_KEYS = ("input_caption", "caption", "input_prompt")
_EDIT_KEYS = ("edit", "instruction", "edit_prompt")


def _first(row: dict, keys: Sequence[str], where: str) -> str:
    for key in keys:
        if isinstance(row.get(key), str):
            return row[key]
    raise ValueError(f"{where}: none of the fields {list(keys)} is present")


def read_ip2p(source: Path, seed: int = 0, all_pairs: bool = False) -> Iterator[EditRecord]:
    """Triples from a JSONL file (one object per line with input_image, edited_image, input_caption, edit; image
    paths relative to the file) or from an InstructPix2Pix folder (``<id>/prompt.json`` with input/edit and
    ``<id>/<seed>_0.jpg`` input, ``<id>/<seed>_1.jpg`` edited; one seed pair per prompt, picked with ``seed``,
    unless ``all_pairs``)."""
    if source.is_file():
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"--ip2p {source}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON ({err})") from err
            yield EditRecord(
                name=f"line{number}",
                source=source.parent / _first(row, _SOURCE_KEYS, where),
                target=source.parent / _first(row, _TARGET_KEYS, where),
                input_caption=_first(row, _CAPTION_KEYS, where),
                edit=_first(row, _EDIT_KEYS, where),
            )
        return
    if not source.is_dir():
        raise FileNotFoundError(f"--ip2p {source}: neither a JSONL file nor a folder")
    prompt_files = sorted(source.rglob("prompt.json"))
    if not prompt_files:
        raise FileNotFoundError(f"--ip2p {source}: no <id>/prompt.json found (expected the InstructPix2Pix layout)")
    for prompt_file in prompt_files:
        folder = prompt_file.parent
        where = str(prompt_file)
        row = json.loads(prompt_file.read_text(encoding="utf-8"))
        caption, edit = _first(row, ("input", *_CAPTION_KEYS), where), _first(row, _EDIT_KEYS, where)
        seeds = sorted(
            p.name[: -len("_0.jpg")] for p in folder.glob("*_0.jpg") if (folder / f"{p.name[:-6]}_1.jpg").is_file()
        )
        if not all_pairs and seeds:
            seeds = [random.Random(f"{seed}/{folder.name}").choice(seeds)]
        for pair in seeds:
            yield EditRecord(
                name=f"{folder.name}_{pair}",
                source=folder / f"{pair}_0.jpg",
                target=folder / f"{pair}_1.jpg",
                input_caption=caption,
                edit=edit,
            )


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` when larger (the loader crops; keeping the aspect ratio keeps its choice)."""
    scale = size / min(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def build_editing(
    records: Iterable[EditRecord], out_dir: Path, size: int, shard_size: int, seed: int = 0
) -> tuple[Counter, list[Path]]:
    """Write ``out_dir/editing-NNNNNN.tar`` in a seeded random order of the triples."""
    counts: Counter = Counter()
    ordered = list(records)
    random.Random(f"editing/{seed}").shuffle(ordered)
    with ShardWriter(out_dir, "editing", shard_size) as writer:
        for index, record in enumerate(progress(ordered, desc="editing shards (triples)")):
            try:
                source, target = open_rgb(record.source), open_rgb(record.target)
            except Exception as err:  # unreadable or missing image: skip the triple
                counts["skipped_unreadable"] += 1
                log.warning("skipping edit %s: unreadable image: %s", record.name, err)
                continue
            writer.write(
                {
                    "__key__": f"{index:08d}",
                    "src.jpg": encode_jpeg(_fit(source, size)),
                    "tgt.jpg": encode_jpeg(_fit(target, size)),
                    "json": {"input_caption": record.input_caption, "edit": record.edit, "name": record.name},
                }
            )
            counts["written"] += 1
    return counts, writer.paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.build_shards", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=Path, help="folder of images for the compositional shards")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--ip2p", type=Path, help="InstructPix2Pix folder or JSONL of edit triples")
    parser.add_argument("--captioner", type=Path, help="local transformers image-to-text model folder (BLIP-2, BLIP)")
    parser.add_argument("--captions", type=Path, help='JSONL {"image": ..., "caption": ...} instead of captioning')
    parser.add_argument("--segmenter", type=Path, help="local CLIPSeg folder (CIDAS/clipseg-rd64-refined)")
    parser.add_argument("--entity-llm", type=Path, help="local causal LM folder; default: rule-based extractor")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="side of the written images (official: 512)")
    parser.add_argument("--threshold", type=float, default=0.3, help="CLIPSeg probability threshold (official: 0.3)")
    parser.add_argument("--max-entities", type=int, default=4, help="at most this many entities per image")
    parser.add_argument("--caption-tokens", type=int, default=30, help="max new tokens per caption (default 30)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="write order and InstructPix2Pix seed pairs")
    parser.add_argument("--ip2p-all-pairs", action="store_true", help="write every seed pair of a prompt")
    args = parser.parse_args(argv)
    if args.images is None and args.ip2p is None:
        parser.error("give --images (compositional shards) and/or --ip2p (editing shards)")
    if args.images is not None:
        if args.segmenter is None:
            parser.error("--images needs --segmenter (a local CLIPSeg folder)")
        if args.captioner is None and args.captions is None:
            parser.error("--images needs --captioner (a local image-to-text model folder) or --captions FILE.jsonl")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    report: dict[str, dict] = {}
    try:
        if args.images is not None:
            extractor = (
                LLMEntityExtractor(args.entity_llm, args.device, max_entities=args.max_entities)
                if args.entity_llm is not None
                else RuleEntityExtractor(args.max_entities)
            )
            builder = CompositionalBuilder(
                segmenter=ClipSegSegmenter(args.segmenter, args.device, args.threshold),
                extractor=extractor,
                captioner=ImageCaptioner(args.captioner, args.device, args.caption_tokens)
                if args.captioner is not None
                else None,
                captions=read_captions(args.captions) if args.captions is not None else None,
                size=args.size,
            )
            counts, paths = build_compositional(
                args.images, args.out / "compositional", builder, args.shard_size, args.seed
            )
            report["compositional"] = {**dict(counts), "shards": [str(p) for p in paths]}
        if args.ip2p is not None:
            records = read_ip2p(args.ip2p, args.seed, args.ip2p_all_pairs)
            counts, paths = build_editing(records, args.out / "editing", args.size, args.shard_size, args.seed)
            report["editing"] = {**dict(counts), "shards": [str(p) for p in paths]}
    except (ModelFolderError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    sys.stdout.write(json.dumps({k: {n: v for n, v in r.items() if n != "shards"} for k, r in report.items()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
