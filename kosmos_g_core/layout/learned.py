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
    def predict_maps(self, prompts: Sequence[str], *, conditioning: Tensor | None = None, sample: bool = False,
                     seed: int = 0, steps: int = 6, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(B,S,S) uint8 label maps and (B,S,S) float boundary probabilities at the model's resolution."""
        text, pad = self._text(prompts, conditioning)
        if sample:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            labels, edge = self.model.sample(text, pad, steps=steps, temperature=temperature, generator=gen)
        else:
            labels, edge = self.model.predict(text, pad)
        return labels.to(torch.uint8).cpu().numpy(), edge.float().cpu().numpy()

    def plan(self, prompt: str, *, width: int = 512, height: int = 512, seed: int = 0, conditioning=None,
             sample: bool = False) -> Layout:
        labels, edge = self.predict_maps([prompt], conditioning=conditioning, sample=sample, seed=seed)
        return layout_from_prediction(labels[0], edge[0], prompt).resized(width, height)


def layout_from_prediction(labels: np.ndarray, edge: np.ndarray, prompt: str, *, min_pixels: int = 3,
                           planner: str = "learned") -> Layout:
    """Label map + boundary probability -> Layout: thing instances are the components left after cutting along
    predicted boundaries (cut pixels rejoin their nearest instance); entities are named after the prompt's nouns."""
    h, w = labels.shape
    inst = np.zeros((h, w), dtype=np.int32)
    parsed = parse_prompt(prompt)
    word_of = {m.class_id: m.word for m in parsed.mentions}
    order = {m.class_id: m.index for m in parsed.mentions}
    classes = sorted((int(c) for c in np.unique(labels) if c != IGNORE), key=lambda c: (order.get(c, 10**6), c))
    entities: list[Entity] = []
    for c in classes:
        cls_mask = labels == c
        if is_thing(c):
            comp, n = connected_components(cls_mask & (edge < 0.5))
            parts = [comp == k for k in range(1, n + 1)]
            parts = [p for p in parts if p.sum() >= min_pixels]
            if not parts:
                parts = [cls_mask] if cls_mask.sum() >= min_pixels else []
            else:
                claimed = np.zeros_like(cls_mask)
                for p in parts:
                    claimed |= p
                for _ in range(3):  # give boundary pixels back to the adjacent instance
                    for p in parts:
                        grow = dilate(p, 1) & cls_mask & ~claimed
                        p |= grow
                        claimed |= grow
            parts.sort(key=lambda p: mask_box(p)[0])
        else:
            parts = [cls_mask]
        for k, part in enumerate(parts):
            iid = len(entities) + 1
            inst[part] = iid
            name = word_of.get(c, display_name(c))
            entities.append(Entity(name, c, iid, mask_box(part), len(parts), k, order.get(c, -1)))
    return Layout(labels.astype(np.uint8), inst, tuple(entities), prompt, planner)
