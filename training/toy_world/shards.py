"""Toy-world training data in the trainer's webdataset shard formats (docs/data.md), plus its KOSMOS-G tokenizer.

Every shard holds only the seen subjects (`scenes.seen_subjects`): the held-out ones are never shown to stage 1, 2
or 3, so the evaluation can score them as zero-shot subjects.

* captions (stages 2, 3): `{key}.jpg` scene, `{key}.txt` caption; on `describe_prob` of them the caption names
  the subject's colour and shape words (so stage 2 aligns those words to the base text encoder too).
* stage-1 captions: the same scenes, every caption naming the subject ("a red round toy on the beach"), plus
  reference-style pictures of a subject alone (its crop with background or its white cut-out, as stage 3 and the
  evaluation show it) captioned "a red round toy". Multimodal pretraining is where the MLLM learns what a picture
  shows (why both kinds of caption: docs/evaluation.md, "What each run taught").
* compositional (stage 3): `{key}.jpg`, `{key}.json` {"caption": "a toy on the beach", "entities": [{"name": "toy",
  "span": [2, 5]}]}, `{key}.ent0.crop.jpg` (square crop with background), `{key}.ent0.cut.png` (white-background
  cut-out), `{key}.ent0.mask.png` (full-image mask). The loader drops the word "toy" with p=0.5 so that the image
  has to stand in for the subject.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from training.data.writer import ShardWriter, encode_jpeg, encode_png

from .scenes import (
    CLASS_WORD,
    PLACES,
    SUBJECT_HALF,
    Scene,
    random_scene,
    reference_image,
    render,
    render_mask,
    seen_subjects,
)

SCENE_SIZE = 64  # stored size; the trainer resizes to sd15.resolution (32) and the ViT's 28 px


def entity_images(scene: Scene, size: int = SCENE_SIZE) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(crop with background, white-background cut-out, full-image mask) of the scene's subject."""
    full = render(scene, size)
    mask = render_mask(scene, size)
    half = SUBJECT_HALF * size * 1.5
    box = tuple(round(v) for v in (scene.cx * size - half, scene.cy * size - half,
                                   scene.cx * size + half, scene.cy * size + half))
    crop = full.crop(box).resize((size, size), Image.BICUBIC)
    cut = Image.composite(full, Image.new("RGB", full.size, (255, 255, 255)), mask).crop(box)
    return crop, cut.resize((size, size), Image.BICUBIC), mask


def write_caption_shards(out_dir: str | Path, count: int, seed: int, describe_prob: float = 0.5,
                         per_shard: int = 500) -> list[Path]:
    rng = random.Random(f"captions/{seed}")
    with ShardWriter(out_dir, "captions", per_shard) as writer:
        for i in range(count):
            scene = random_scene(rng, subjects=seen_subjects())
            writer.write({"__key__": f"c{i:06d}", "jpg": encode_jpeg(render(scene, SCENE_SIZE)),
                          "txt": scene.caption(describe=rng.random() < describe_prob)})
    return writer.paths


def write_reference_shards(out_dir: str | Path, count: int, seed: int, per_shard: int = 500) -> list[Path]:
    """Pictures of one subject alone, captioned with what it looks like: half white cut-outs, half crops on a random
    place, at a random framing (the subject fills 56-90 % of the side)."""
    rng = random.Random(f"references/{seed}")
    with ShardWriter(out_dir, "references", per_shard) as writer:
        for i in range(count):
            subject = random_scene(rng, subjects=seen_subjects()).subject
            image = reference_image(subject, SCENE_SIZE, cutout=rng.random() < 0.5, place=rng.choice(list(PLACES)),
                                    crop=rng.uniform(2 * SUBJECT_HALF / 0.9, 1.0))
            writer.write({"__key__": f"r{i:06d}", "jpg": encode_jpeg(image),
                          "txt": f"a {subject.description()} {CLASS_WORD}"})
    return writer.paths


def write_compositional_shards(out_dir: str | Path, count: int, seed: int, per_shard: int = 500) -> list[Path]:
    rng = random.Random(f"compositional/{seed}")
    with ShardWriter(out_dir, "compositional", per_shard) as writer:
        for i in range(count):
            scene = random_scene(rng, subjects=seen_subjects())
            crop, cut, mask = entity_images(scene)
            start, end = scene.entity_span()
            writer.write({
                "__key__": f"p{i:06d}", "jpg": encode_jpeg(render(scene, SCENE_SIZE)),
                "json": {"caption": scene.caption(), "entities": [{"name": "toy", "span": [start, end]}]},
                "ent0.crop.jpg": encode_jpeg(crop), "ent0.cut.png": encode_png(cut), "ent0.mask.png": encode_png(mask),
            })
    return writer.paths


def write_kosmos_tokenizer(out_dir: str | Path, seed: int = 0, vocab_size: int = 120) -> Path:
    """A small SentencePiece BPE + fairseq dict.txt trained on toy captions (used when no real KOSMOS-G tokenizer
    folder is given: the demo must run on a fresh clone). The tiny preset's 64,007-row embedding covers its ids."""
    import sentencepiece as spm

    from kosmos_g_core.tokenizer import dict_from_sentencepiece

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"tokenizer/{seed}")
    lines = [random_scene(rng, subjects=seen_subjects()).caption(describe=rng.random() < 0.5) for _ in range(2000)]
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
