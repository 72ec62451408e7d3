"""One raw sample -> the per-sample features of a stage (token ids, image slots, images, target, entities).

The token layout is the core's (:func:`kosmos_g_core.prompt.prompt_tokens`): ``[<s>]`` + per image its text
snippet, ``<image>`` x 65, ``</image>``, + trailing text. Stage 1 appends ``</s>`` (language modelling learns where
a document ends); stages 2 and 3 feed the prompt exactly as the official loaders do after their shift (no ``</s>``).

All random choices of a sample come from ``rng``, seeded by the sample's identity, so they are the same whichever
data worker or rank reads the sample and whether or not the run was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from kosmos_g_core.image import preprocess
from kosmos_g_core.prompt import InterleavedPrompt, PromptImage, prompt_tokens
from kosmos_g_core.tokenizer import KosmosTokenizer

from .config import DataConfig, SourceConfig
from .decode import (
    SampleError,
    clean_text,
    decode_image,
    decode_json,
    decode_text,
    image_member,
    json_str,
    member,
)
from .entities import place_entities
from .frozen_cache import content_key
from .shards import RawSample
from .transforms import mask_tensor, target_geometry, target_tensor

IMAGE_TOKENS = 64


@dataclass
class Features:
    """What one sample contributes to a batch. Shapes: pixels (3, S, S) each; target (3, R, R); target_geometry: the
    target's (original h, original w, crop top, crop left, R, R) (transforms.target_geometry); entity_masks
    (E, R, R); entity_token_index: E LongTensors of positions in ``ids``; entity_names: the E entity words.
    cache_key: content key of what the frozen SD1.5 part reads (stage 2: the caption; stage 3: the target image
    bytes); frozen: that part's cached outputs, added by the loader when the run reads a cache (frozen_cache.py)."""

    ids: list[int]
    image_mask: list[bool]
    source: str
    prompt: str
    key: str = ""
    pixels: list[torch.Tensor] = field(default_factory=list)
    caption: str | None = None
    target: torch.Tensor | None = None
    target_geometry: tuple[int, ...] | None = None
    entity_masks: torch.Tensor | None = None
    entity_token_index: list[torch.Tensor] = field(default_factory=list)
    entity_names: list[str] = field(default_factory=list)
    cache_key: str = ""
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureContext:
    """Everything a sample needs besides its bytes and its random generator."""

    stage: str
    tokenizer: KosmosTokenizer
    config: DataConfig
    image_size: int
    target_size: int
    caption_filter: Callable[[str], bool] | None = None


def sample_features(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    """Features of ``raw`` for ``ctx.stage``; raises SampleError (counted, the sample is skipped) when unusable."""
    builder = _BUILDERS[(ctx.stage, source.kind)]
    features = builder(ctx, source, raw, rng)
    features.key = f"{raw.url}#{raw.key}"
    if len(features.ids) > ctx.config.max_tokens:
        raise SampleError(
            "skipped_too_long", f"sample {raw.key!r}: {len(features.ids)} tokens > max_tokens {ctx.config.max_tokens}"
        )
    return features


def _check_caption(ctx: FeatureContext, source: SourceConfig, caption: str, key: str) -> list[int]:
    """Caption ids, after the empty / too-long / caption_filter checks of the stage."""
    if not caption:
        raise SampleError("skipped_empty", f"sample {key!r}: empty caption")
    ids = ctx.tokenizer.encode(caption)
    limit = source.max_caption_tokens
    if limit is not None and len(ids) > limit:
        raise SampleError("skipped_long_caption", f"sample {key!r}: caption has {len(ids)} tokens > {limit}")
    if ctx.caption_filter is not None and not ctx.caption_filter(caption):
        raise SampleError("skipped_caption_filter", f"sample {key!r}: caption rejected by caption_filter")
    return ids


# Which member is a stage-3 sample's diffusion target, per source kind: the one owner of that rule for the feature
# builders below and the frozen-output cache builder (training/build_cache.py).
TARGET_STEMS = {"captions": "", "compositional": "", "editing": "tgt."}
TARGET_WHAT = {"captions": "the image", "compositional": "the full image", "editing": "tgt image"}


def target_image_bytes(kind: str, raw: RawSample) -> bytes:
    """The encoded target image of a stage-3 sample of source ``kind``."""
    return image_member(raw.members, raw.key, TARGET_STEMS[kind])


def caption_text(raw: RawSample) -> str:
    """The caption of a captions sample, as the stages read it (UTF-8, stripped, ``<i>`` removed)."""
    return decode_text(member(raw.members, "txt", raw.key), raw.key, ".txt")


def _checked_image(data: bytes, source: SourceConfig, key: str, what: str) -> Image.Image:
    image = decode_image(data, key, what)
    if min(image.size) < source.min_image_side:
        raise SampleError(
            "skipped_small_image", f"sample {key!r}: {what} is {image.size}, shorter side < {source.min_image_side}"
        )
    return image


def _layout(ctx: FeatureContext, prompt: InterleavedPrompt, eos: bool) -> tuple[list[int], list[bool]]:
    ids, slots = prompt_tokens(prompt, ctx.tokenizer, image_tokens=IMAGE_TOKENS)
    if eos:
        ids, slots = ids + [ctx.tokenizer.EOS], slots + [False]
    return ids, slots


def _pixels(ctx: FeatureContext, prompt: InterleavedPrompt) -> list[torch.Tensor]:
    return [preprocess(item.image, size=ctx.image_size, mask=item.mask) for item in prompt.images]


def _features(ctx: FeatureContext, source: SourceConfig, prompt: InterleavedPrompt, eos: bool) -> Features:
    ids, slots = _layout(ctx, prompt, eos)
    return Features(ids=ids, image_mask=slots, source=source.name, prompt=prompt.text, pixels=_pixels(ctx, prompt))


# ---- stage 1: multimodal language modelling ------------------------------------------------------------------


def _stage1_text(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    text = decode_text(member(raw.members, "txt", raw.key), raw.key, ".txt")
    if not text:
        raise SampleError("skipped_empty", f"sample {raw.key!r}: empty text")
    # Long documents are cut to the context length rather than dropped (plain text has no image to split).
    ids = ([ctx.tokenizer.BOS] + ctx.tokenizer.encode(text) + [ctx.tokenizer.EOS])[: ctx.config.max_tokens]
    return Features(ids=ids, image_mask=[False] * len(ids), source=source.name, prompt=text)


def _stage1_captions(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    caption = decode_text(member(raw.members, "txt", raw.key), raw.key, ".txt")
    _check_caption(ctx, source, caption, raw.key)
    image = _checked_image(image_member(raw.members, raw.key), source, raw.key, "the image")
    # KOSMOS-1 image-caption layout: the image first, then its caption.
    return _features(ctx, source, InterleavedPrompt(("", PromptImage(image), caption)), eos=True)


def _stage1_interleaved(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    doc = decode_json(member(raw.members, "json", raw.key), raw.key, ".json")
    segments = doc.get("segments")
    if not isinstance(segments, list) or not segments:
        raise SampleError("skipped_corrupt", f"sample {raw.key!r}: .json has no non-empty 'segments' list")
    parts: list[str | PromptImage] = []
    for segment in segments:
        if isinstance(segment, str):
            parts.append(clean_text(segment))
        elif isinstance(segment, dict) and isinstance(segment.get("image"), int):
            stem = f"{segment['image']}."
            image = _checked_image(image_member(raw.members, raw.key, stem), source, raw.key, f"image {stem}jpg")
            parts.append(PromptImage(image))
        else:
            raise SampleError("skipped_corrupt", f"sample {raw.key!r}: bad segment {segment!r}")
    return _features(ctx, source, InterleavedPrompt(tuple(parts)), eos=True)


# ---- stage 2: aligning (text only) ---------------------------------------------------------------------------


def _stage2_captions(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    caption = caption_text(raw)
    ids = _check_caption(ctx, source, caption, raw.key)
    tokens = [ctx.tokenizer.BOS] + ids
    return Features(ids=tokens, image_mask=[False] * len(tokens), source=source.name, prompt=caption, caption=caption,
                    cache_key=content_key(caption))


# ---- stage 3: instruction tuning -----------------------------------------------------------------------------


def _empty_masks(ctx: FeatureContext) -> torch.Tensor:
    return torch.zeros(0, ctx.target_size, ctx.target_size)


def _stage3_captions(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    caption = caption_text(raw)
    _check_caption(ctx, source, caption, raw.key)
    data = target_image_bytes(source.kind, raw)
    image = _checked_image(data, source, raw.key, TARGET_WHAT[source.kind])
    features = _features(ctx, source, InterleavedPrompt((caption,)), eos=False)
    features.target = target_tensor(image, ctx.target_size)
    features.target_geometry = target_geometry(image, ctx.target_size)
    features.entity_masks = _empty_masks(ctx)
    features.cache_key = content_key(data)
    return features


def _stage3_editing(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    info = decode_json(member(raw.members, "json", raw.key), raw.key, ".json")
    input_caption = json_str(info, "input_caption", raw.key, ".json")
    edit = json_str(info, "edit", raw.key, ".json")
    if not edit:
        raise SampleError("skipped_empty", f"sample {raw.key!r}: empty edit instruction")
    drop_caption = rng.random() < ctx.config.drop_input_caption_prob
    src = decode_image(image_member(raw.members, raw.key, "src."), raw.key, "src image")
    data = target_image_bytes(source.kind, raw)
    tgt = _checked_image(data, source, raw.key, TARGET_WHAT[source.kind])
    prompt = InterleavedPrompt(("" if drop_caption else input_caption, PromptImage(src), edit))
    features = _features(ctx, source, prompt, eos=False)
    features.target = target_tensor(tgt, ctx.target_size)
    features.target_geometry = target_geometry(tgt, ctx.target_size)
    features.entity_masks = _empty_masks(ctx)
    features.cache_key = content_key(data)
    return features


def _image_runs(slots: list[bool]) -> list[int]:
    """Start position of each image's 64 slots."""
    return [i for i, s in enumerate(slots) if s and (i == 0 or not slots[i - 1])]


def _stage3_compositional(ctx: FeatureContext, source: SourceConfig, raw: RawSample, rng: random.Random) -> Features:
    info = decode_json(member(raw.members, "json", raw.key), raw.key, ".json")
    caption = json_str(info, "caption", raw.key, ".json")
    entities = info.get("entities", [])
    if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
        raise SampleError("skipped_corrupt", f"sample {raw.key!r}: .json 'entities' must be a list of objects")
    names = [clean_text(str(e.get("name", ""))) for e in entities]
    if not caption:
        raise SampleError("skipped_empty", f"sample {raw.key!r}: empty caption")
    data = target_image_bytes(source.kind, raw)
    full = _checked_image(data, source, raw.key, TARGET_WHAT[source.kind])

    # Official order of draws: one word-drop coin per sample, then one crop/cut-out coin per placed entity.
    drop_words = rng.random() < ctx.config.drop_entity_word_prob
    slots, tail = place_entities(caption, names, drop_words)
    parts: list[str | PromptImage] = []
    masks: list[torch.Tensor] = []
    for slot in slots:
        kind = "cut" if rng.random() < ctx.config.cutout_prob else "crop"
        stem = f"ent{slot.entity}.{kind}."
        entity_image = decode_image(image_member(raw.members, raw.key, stem), raw.key, f"{stem}jpg/png")
        mask = decode_image(image_member(raw.members, raw.key, f"ent{slot.entity}.mask."), raw.key, "mask", "L")
        if mask.size != full.size:
            mask = mask.resize(full.size, Image.NEAREST)
        parts += [slot.text, PromptImage(entity_image)]
        masks.append(mask_tensor(mask, ctx.target_size))
    parts.append(tail)

    features = _features(ctx, source, InterleavedPrompt(tuple(parts)), eos=False)
    starts = _image_runs(features.image_mask)
    for slot, start in zip(slots, starts, strict=True):
        # The entity word (when kept) is the end of the snippet right before this image's <image> token.
        word = len(ctx.tokenizer.encode(slot.text)) - len(ctx.tokenizer.encode(slot.prefix))
        boi = start - 1
        positions = list(range(boi - max(word, 0), boi)) + list(range(start, start + IMAGE_TOKENS))
        features.entity_token_index.append(torch.tensor(positions, dtype=torch.long))
        features.entity_names.append(names[slot.entity])
    features.target = target_tensor(full, ctx.target_size)
    features.target_geometry = target_geometry(full, ctx.target_size)
    features.entity_masks = torch.stack(masks) if masks else _empty_masks(ctx)
    features.cache_key = content_key(data)
    return features


_BUILDERS: dict[tuple[str, str], Callable[[FeatureContext, SourceConfig, RawSample, random.Random], Features]] = {
    ("stage1", "text"): _stage1_text,
    ("stage1", "captions"): _stage1_captions,
    ("stage1", "interleaved"): _stage1_interleaved,
    ("stage2", "captions"): _stage2_captions,
    ("stage3", "captions"): _stage3_captions,
    ("stage3", "editing"): _stage3_editing,
    ("stage3", "compositional"): _stage3_compositional,
}
