"""Toy-world training data in the trainer's webdataset shard formats (docs/data.md), plus its KOSMOS-G tokenizer.

Every shard holds only the seen subjects (`scenes.seen_subjects`): the held-out ones are never shown to stage 1, 2
or 3, so the evaluation can score them as zero-shot subjects. A share `pair_prob` of the scenes (captions and
compositional) shows two subjects side by side ("a toy next to a block on the beach", `scenes.PairScene`).

* captions (stages 2, 3): `{key}.jpg` scene, `{key}.txt` caption; on `describe_prob` of them the caption names
  the subject's colour and shape words (so stage 2 aligns those words to the base text encoder too).
* stage-1 captions: the same scenes, every caption naming the subject, plus reference-style pictures of a subject
  alone (its crop with background or its white cut-out, as stage 3 and the evaluation show it) captioned
  "a red toy". Multimodal pretraining is where the MLLM learns what a picture shows (why both kinds of caption:
  docs/evaluation.md, "What each run taught"). With `single_attribute` (the toy run's default for stage 1) each
  subject is named by one of its two attribute words, drawn at random ("a red toy on the beach", "a round toy"):
  captions naming both ("a red round toy") would teach the language model which colour goes with which shape, and a
  held-out pair, never written, would read as improbable whatever the picture shows.
* compositional (stage 3): `{key}.jpg`, `{key}.json` {"caption": "a toy on the beach", "entities": [{"name": "toy",
  "span": [2, 5]}]}, `{key}.ent0.crop.jpg` (square crop with background), `{key}.ent0.cut.png` (white-background
  cut-out), `{key}.ent0.mask.png` (full-image mask); two-subject scenes have entities "toy" and "block" and files
  `ent0.*`, `ent1.*`. The loader drops the entity words with p=0.5 so that the images have to stand in for the
  subjects: "a <image> next to a <image> on the beach".
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from training.data.writer import ShardWriter, encode_jpeg, encode_png

from .scenes import (
    ATTRIBUTES,
    CLASS_WORD,
    PAIR_PROB,
    PLACES,
    SUBJECT_HALF,
    PairScene,
    Scene,
    off_palette_colour,
    random_any_scene,
    random_scene,
    reference_image,
    render,
    render_mask,
    seen_subjects,
)

SCENE_SIZE = 64  # stored size; the trainer resizes to sd15.resolution (32) and the ViT's 28 px


def entity_images(scene: Scene | PairScene, entity: int = 0,
                  size: int = SCENE_SIZE) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(crop with background, white-background cut-out, full-image mask) of subject `entity` of the scene."""
    full = render(scene, size)
    mask = render_mask(scene, size, entity)
    _, cx, cy, half = scene.placed()[entity]
    half = half * size * 1.5
    box = tuple(round(v) for v in (cx * size - half, cy * size - half, cx * size + half, cy * size + half))
    crop = full.crop(box).resize((size, size), Image.BICUBIC)
    cut = Image.composite(full, Image.new("RGB", full.size, (255, 255, 255)), mask).crop(box)
    return crop, cut.resize((size, size), Image.BICUBIC), mask


def _attributes(rng: random.Random, count: int, single_attribute: bool) -> tuple[str | None, ...]:
    """Per subject, the attribute word its caption names: one drawn at random, or None (both words)."""
    return tuple(rng.choice(ATTRIBUTES) if single_attribute else None for _ in range(count))


def write_caption_shards(out_dir: str | Path, count: int, seed: int, describe_prob: float = 0.5,
                         pair_prob: float = PAIR_PROB, per_shard: int = 500,
                         single_attribute: bool = False) -> list[Path]:
    rng = random.Random(f"captions/{seed}")
    with ShardWriter(out_dir, "captions", per_shard) as writer:
        for i in range(count):
            scene = random_any_scene(rng, pair_prob, seen_subjects())
            describe = rng.random() < describe_prob
            attributes = _attributes(rng, len(scene.subjects), single_attribute)
            writer.write({"__key__": f"c{i:06d}", "jpg": encode_jpeg(render(scene, SCENE_SIZE)),
                          "txt": scene.caption(describe=describe, attributes=attributes)})
    return writer.paths


def write_reference_shards(out_dir: str | Path, count: int, seed: int, per_shard: int = 500,
                           single_attribute: bool = False, off_palette_prob: float = 0.0) -> list[Path]:
    """Pictures of one subject alone, captioned with what it looks like ("a red round toy", or with
    `single_attribute` one word: "a red toy" / "a round toy"): half white cut-outs, half crops on a random place,
    at a random framing (the subject fills 56-90 % of the side). A share `off_palette_prob` shows a shape in a
    random colour outside the palette (`scenes.off_palette_colour`), captioned by its shape alone ("a round toy")."""
    rng = random.Random(f"references/{seed}")
    with ShardWriter(out_dir, "references", per_shard) as writer:
        for i in range(count):
            subject = random_scene(rng, subjects=seen_subjects()).subject
            fill = off_palette_colour(rng) if off_palette_prob > 0 and rng.random() < off_palette_prob else None
            image = reference_image(subject, SCENE_SIZE, cutout=rng.random() < 0.5, place=rng.choice(list(PLACES)),
                                    crop=rng.uniform(2 * SUBJECT_HALF / 0.9, 1.0), fill=fill)
            attribute = "shape" if fill else _attributes(rng, 1, single_attribute)[0]
            writer.write({"__key__": f"r{i:06d}", "jpg": encode_jpeg(image),
                          "txt": f"a {subject.description(attribute)} {CLASS_WORD}"})
    return writer.paths


def write_compositional_shards(out_dir: str | Path, count: int, seed: int, pair_prob: float = PAIR_PROB,
                               per_shard: int = 500) -> list[Path]:
    rng = random.Random(f"compositional/{seed}")
    with ShardWriter(out_dir, "compositional", per_shard) as writer:
        for i in range(count):
            scene = random_any_scene(rng, pair_prob, seen_subjects())
            sample = {"__key__": f"p{i:06d}", "jpg": encode_jpeg(render(scene, SCENE_SIZE)),
                      "json": {"caption": scene.caption(), "entities": [
                          {"name": name, "span": [start, end]} for name, start, end in scene.entity_spans()]}}
            for k in range(len(scene.placed())):
                crop, cut, mask = entity_images(scene, k)
                sample |= {f"ent{k}.crop.jpg": encode_jpeg(crop), f"ent{k}.cut.png": encode_png(cut),
                           f"ent{k}.mask.png": encode_png(mask)}
            writer.write(sample)
    return writer.paths


def write_kosmos_tokenizer(out_dir: str | Path, seed: int = 0, vocab_size: int = 120) -> Path:
    """A small SentencePiece BPE + fairseq dict.txt trained on toy captions (used when no real KOSMOS-G tokenizer
    folder is given: the demo must run on a fresh clone). The tiny preset's 64,007-row embedding covers its ids."""
    import sentencepiece as spm

    from kosmos_g_core.tokenizer import dict_from_sentencepiece

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"tokenizer/{seed}")
    lines = [random_any_scene(rng, PAIR_PROB, seen_subjects()).caption(describe=rng.random() < 0.5)
             for _ in range(2000)]
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "sentencepiece.bpe"),
                                   vocab_size=vocab_size, model_type="bpe", minloglevel=2,
                                   num_threads=1)
    spm_path = out / "sentencepiece.bpe.model"
    (out / "dict.txt").write_bytes(dict_from_sentencepiece(spm_path.read_bytes()))
    corpus.unlink()
    (out / "sentencepiece.bpe.vocab").unlink(missing_ok=True)
    return out
