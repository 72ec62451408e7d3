"""The learned planner (TextToLayoutModel behind the LayoutPlanner interface) and its single-file checkpoint.

Checkpoint: one .safetensors with the model weights and metadata {"format": "kosmos_g_layout", "format_version": "1",
"config": <LayoutModelConfig json>, "vocab": <word list json, words mode only>}. The training stage exports it; the
Load Layout Model node reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .labels import IGNORE, display_name, is_thing
from .layout import Entity, Layout, connected_components, mask_box
from .model import LayoutModelConfig, TextToLayoutModel, WordVocab, mention_batch
from .prompt_parser import parse_prompt
from .raster import dilate

log = logging.getLogger(__name__)

FORMAT = "kosmos_g_layout"


class LayoutCheckpointError(ValueError):
    """A file is not a layout-model checkpoint, or it does not match its own config."""


def save_layout_model(path: str | Path, model: TextToLayoutModel, vocab: WordVocab | None,
                      metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "format_version": "1", "config": json.dumps(model.config.to_dict())}
    if vocab is not None:
        meta["vocab"] = vocab.to_json()
    meta.update(metadata or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_layout_model(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> LearnedPlanner:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layout model {path} not found (expected a .safetensors written by the layout stage)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise LayoutCheckpointError(
            f"{path} is not a KOSMOS-G layout model (metadata format={meta.get('format')!r}, expected {FORMAT!r}); "
            "train one with `python -m training.train --config training/configs/layout.toml`")
    config = LayoutModelConfig.from_dict(json.loads(meta["config"]))
    model = TextToLayoutModel(config)
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LayoutCheckpointError(f"{path}: weights do not match the stored config ({e})") from e
    vocab = WordVocab.from_json(meta["vocab"]) if "vocab" in meta else None
    if config.text_encoder == "words" and vocab is None:
        raise LayoutCheckpointError(f"{path}: a words-mode layout model without its vocabulary")
    return LearnedPlanner(model.to(device=device, dtype=dtype).eval(), vocab)


class LearnedPlanner:
    """LayoutPlanner over a TextToLayoutModel. Deterministic by default; sample=True draws a layout (seeded)."""

    name = "learned"

    def __init__(self, model: TextToLayoutModel, vocab: WordVocab | None = None):
        self.model = model
        self.vocab = vocab

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _text(self, prompts: Sequence[str], conditioning: Tensor | None) -> tuple[Tensor, Tensor]:
        c = self.model.config
        mentions = mention_batch(prompts, c.max_mentions) if c.mention_tokens else None
        if c.text_encoder == "words":
            words = self.vocab.batch(prompts, c.max_words).to(self.device)
            return self.model.encode_text(words=words, mentions=mentions)
        if conditioning is None:
            raise ValueError(
                "this layout model is conditioned on the SD1.5 CLIP text space: connect a conditioning "
                "(KOSMOS-G Encode or CLIPTextEncode output) to plan a layout")
        cond = conditioning.to(self.device, dtype=next(self.model.parameters()).dtype)
        if cond.shape[0] == 1 and len(prompts) > 1:
            cond = cond.expand(len(prompts), -1, -1)
        return self.model.encode_text(context=cond, mentions=mentions)

    @torch.no_grad()
    def predict_probs(self, prompts: Sequence[str], *, conditioning: Tensor | None = None, sample: bool = False,
                      seed: int = 0, steps: int = 6, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(B,C,S,S) float32 class probabilities and (B,S,S) boundary probabilities at the model's resolution."""
        text, pad = self._text(prompts, conditioning)
        if sample:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            probs, edge = self.model.sample(text, pad, steps=steps, temperature=temperature, generator=gen)
        else:
            probs, edge = self.model.predict(text, pad)
        return probs.float().cpu().numpy(), edge.float().cpu().numpy()

    def predict_maps(self, prompts: Sequence[str], *, conditioning: Tensor | None = None, sample: bool = False,
                     seed: int = 0, steps: int = 6, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(B,S,S) uint8 per-pixel argmax label maps and (B,S,S) boundary probabilities."""
        probs, edge = self.predict_probs(prompts, conditioning=conditioning, sample=sample, seed=seed, steps=steps,
                                         temperature=temperature)
        return probs.argmax(1).astype(np.uint8), edge

    def layouts(self, prompts: Sequence[str], *, conditioning: Tensor | None = None, sample: bool = False,
                seed: int = 0) -> list[Layout]:
        """Layouts at the model's resolution, decoded with the prompts' counts (see decode_layout)."""
        probs, edge = self.predict_probs(prompts, conditioning=conditioning, sample=sample, seed=seed)
        return [decode_layout(p, e, t) for p, e, t in zip(probs, edge, prompts, strict=True)]

    def plan(self, prompt: str, *, width: int = 512, height: int = 512, seed: int = 0, conditioning=None,
             sample: bool = False) -> Layout:
        return self.layouts([prompt], conditioning=conditioning, sample=sample, seed=seed)[0].resized(width, height)


def _box_sum(a: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Sum of `a` over the kh x kw window centred on every pixel (zero padding), via an integral image."""
    h, w = a.shape
    top, left = kh // 2, kw // 2
    pad = np.zeros((h + kh, w + kw))
    pad[top : top + h, left : left + w] = a
    ii = np.zeros((h + kh + 1, w + kw + 1))
    ii[1:, 1:] = pad.cumsum(0).cumsum(1)
    return ii[kh : kh + h, kw : kw + w] - ii[:h, kw : kw + w] - ii[kh : kh + h, :w] + ii[:h, :w]


def _blob(h: int, w: int, cy: int, cx: int, bh: int, bw: int, shape: str) -> np.ndarray:
    ys = np.arange(h)[:, None] - cy
    xs = np.arange(w)[None, :] - cx
    ry, rx = bh / 2.0, bw / 2.0
    if shape in ("box", "round", "roof", "tent"):
        return (np.abs(ys + 0.5) <= ry) & (np.abs(xs + 0.5) <= rx)
    return ((ys + 0.5) / ry) ** 2 + ((xs + 0.5) / rx) ** 2 <= 1.0


def decode_layout(probs: np.ndarray, edge: np.ndarray, prompt: str) -> Layout:
    """Class probabilities (C,S,S) -> Layout, honouring the prompt's nouns and counts.

    A per-pixel argmax is the mean layout: an object whose position the model is unsure of (three dogs somewhere on
    the grass) spreads its probability thin and wins no pixel. So, as a detection head decodes a heat map, every
    counted noun of the prompt (things and countable stuff such as trees and houses) is decoded into exactly its
    count of instances: each an ellipse or box (the planner's shape and aspect prior for the class) whose area is the
    model's expected area sum(p_c) / n, placed where it covers the most probability, instances of one class one
    pixel apart. A noun whose argmax components already match its count keeps them; the rest keeps the argmax.
    """
    from .planner import _prior
    from .vocabulary import is_countable

    _, h, w = probs.shape
    argmax = probs.argmax(0)
    mentions = []
    kept: dict[int, list[np.ndarray]] = {}
    for m in parse_prompt(prompt).mentions:
        if not is_countable(m.class_id):
            continue
        # the argmax already shows exactly the asked count: keep its shapes
        comp, n = connected_components((argmax == m.class_id) & (edge < 0.5))
        parts = [p for p in (comp == k for k in range(1, n + 1)) if p.sum() >= 3]
        if len(parts) == m.count:
            kept[m.class_id] = parts
        else:
            mentions.append(m)
    counted = {m.class_id for m in mentions}
    rest = probs.copy()
    rest[list(counted)] = -1.0
    labels = rest.argmax(0).astype(np.uint8)  # background: argmax over classes that are not decoded as instances
    blocked = np.zeros((h, w), dtype=bool)
    for parts in kept.values():
        for part in parts:
            blocked |= dilate(part, 1)
    placed: list[tuple[int, np.ndarray]] = []
    # largest objects first, so small ones fill around them
    for m in sorted(mentions, key=lambda m: -float(probs[m.class_id].sum()) / max(m.count, 1)):
        p = probs[m.class_id].astype(np.float64)
        _, aspect, shape = _prior(m.class_id)
        area = max(4.0, float(p.sum()) / m.count)
        bh = max(2, int(round(np.sqrt(area / aspect))))
        bw = max(2, int(round(area / bh)))
        same = np.zeros((h, w), dtype=bool)  # instances of this class: keep a one-pixel gap
        for _ in range(m.count):
            free = np.where(blocked | same, 0.0, p)
            overlap = _box_sum((blocked | same).astype(np.float64), bh, bw)
            score = _box_sum(free, bh, bw) - 10.0 * overlap  # probability covered, overlapping placements penalised
            cy, cx = np.unravel_index(int(score.argmax()), score.shape)
            region = _blob(h, w, cy, cx, bh, bw, shape) & ~same
            if not region.any():
                break
            placed.append((m.class_id, region))
            same |= dilate(region, 1)
        blocked |= same
    by_class: dict[int, list[np.ndarray]] = dict(kept)
    for cls, region in placed:
        labels[region] = cls
    for cls, region in placed:  # a later, overlapping blob may have covered part of an earlier one
        by_class.setdefault(cls, []).append(region & (labels == cls))
    return _layout(labels, by_class, prompt, edge)


def _layout(labels: np.ndarray, regions: dict[int, list[np.ndarray]], prompt: str, edge: np.ndarray,
            min_pixels: int = 3) -> Layout:
    """Entities in prompt order: given regions for some classes; for other things the 4-connected components left
    after cutting along predicted contact lines (edge > 0.5); one region per stuff class."""
    parsed = parse_prompt(prompt)
    word_of = {m.class_id: m.word for m in parsed.mentions}
    order = {m.class_id: m.index for m in parsed.mentions}
    classes = sorted({int(c) for c in np.unique(labels) if c != IGNORE} | set(regions),
                     key=lambda c: (order.get(c, 10**6), c))
    inst = np.zeros(labels.shape, dtype=np.int32)
    entities: list[Entity] = []
    for c in classes:
        cls_mask = labels == c
        if c in regions:
            parts = [r & cls_mask for r in regions[c]]
        elif is_thing(c):
            comp, n = connected_components(cls_mask & (edge < 0.5))
            parts = [p for p in (comp == k for k in range(1, n + 1)) if p.sum() >= min_pixels]
            if not parts and cls_mask.sum() >= min_pixels:
                parts = [cls_mask]
        else:
            parts = [cls_mask]
        parts = [p for p in parts if p.any()]
        parts.sort(key=lambda p: mask_box(p)[0])
        for k, part in enumerate(parts):
            iid = len(entities) + 1
            inst[part] = iid
            entities.append(Entity(word_of.get(c, display_name(c)), c, iid, mask_box(part), len(parts), k,
                                   order.get(c, -1)))
    return Layout(labels.astype(np.uint8), inst, tuple(entities), prompt, "learned")


def layout_from_prediction(labels: np.ndarray, edge: np.ndarray, prompt: str) -> Layout:
    """A bare label map (+ boundary probabilities) -> Layout, without count decoding (argmax layouts, tests)."""
    return _layout(np.asarray(labels, dtype=np.uint8), {}, prompt, edge)
