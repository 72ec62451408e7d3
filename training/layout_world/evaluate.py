"""Generate the held-out prompts under every condition (same prompts, same noise) and score the pictures exactly.

Conditions (`CONDITIONS`): text only (the base model), and text + a planned layout through a ControlNet, for each
layout source (the scene's true layout as an oracle, the rule-based planner, the learned planner with and without
the parser's mention tokens) and each ControlNet (trained plainly, or with semantic supervision). The planners are
also scored on their own (their layouts read as pictures): what a ControlNet following its layout perfectly would
reach.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kosmos_g_core.layout import RuleBasedPlanner
from kosmos_g_core.layout.labels import NUM_CLASSES
from kosmos_g_core.layout.learned import load_layout_model
from kosmos_g_core.layout.metrics import ConfusionMatrix
from kosmos_g_core.layout.palettes import get_palette
from training.evaluation.sampler import DiffusionSampler, to_pil
from training.stages.controlnet import load_controlnet
from training.toy_world.base_model import encode_text, load_text_side

from .scenes import SIZE, LayoutScene, scenes
from .scorer import read_scene, score_pictures

log = logging.getLogger(__name__)

HELD_OUT_SEED = 1000  # the study's prompts: a scene set no training saw (training sets use seeds below 999)
TUNING_SEED = 999  # prompts for choosing settings, so that the study's prompts stay untouched by any choice


@dataclass(frozen=True)
class EvalSettings:
    prompts: int = 200
    steps: int = 25
    guidance: float = 5.0
    noise_seed: int = 0
    scene_seed: int = HELD_OUT_SEED
    palette: str = "coco_panoptic_133"


@dataclass(frozen=True)
class Condition:
    name: str
    planner: str | None  # key of the layout sources, None = text only
    controlnet: str | None  # key of the ControlNets


CONDITIONS = (
    Condition("text_only", None, None),
    Condition("true_layout_controlnet", "true_layout", "plain"),
    Condition("rule_based_controlnet", "rule_based", "plain"),
    Condition("rule_based_controlnet_supervised", "rule_based", "supervised"),
    Condition("learned_controlnet", "learned", "plain"),
    Condition("learned_controlnet_supervised", "learned", "supervised"),
    Condition("learned_without_mentions_controlnet_supervised", "learned_without_mentions", "supervised"),
)
COLUMNS = ("presence", "count_accuracy", "relation_accuracy", "faithfulness_miou", "text_fidelity", "exact")




def _resize(label_map: np.ndarray) -> np.ndarray:
    if label_map.shape == (SIZE, SIZE):
        return label_map
    return np.asarray(Image.fromarray(label_map).resize((SIZE, SIZE), Image.NEAREST))


def layout_sources(learned: Path | None, learned_without_mentions: Path | None) -> dict[str, Callable]:
    """name -> (scenes -> (S, S) label maps). The learned planner decodes with the prompt's parsed counts (the
    node's output); the model trained without mention tokens is decoded by the raw per-pixel argmax, so no count
    of the rule-based parser reaches its layouts."""
    sources: dict[str, Callable] = {
        "true_layout": lambda batch: [s.labels for s in batch],
        "rule_based": lambda batch: [RuleBasedPlanner().plan(s.caption, width=SIZE, height=SIZE).label_map
                                     for s in batch],
    }
    if learned is not None:
        planner = load_layout_model(learned)
        sources["learned"] = lambda batch: [_resize(lay.label_map) for lay in planner.layouts([s.caption for s in batch])]
    if learned_without_mentions is not None:
        bare = load_layout_model(learned_without_mentions)
        sources["learned_without_mentions"] = lambda batch: [
            _resize(m) for m in bare.predict_maps([s.caption for s in batch])[0]]
    return sources


def planner_scores(layouts: Sequence[np.ndarray], batch: Sequence[LayoutScene]) -> dict[str, float]:
    """A planner's layouts read as pictures: what the prompt asks (counts, relation) and mIoU vs the true layouts."""
    readings = [read_scene(lab, s) for lab, s in zip(layouts, batch, strict=True)]
    cm = ConfusionMatrix(NUM_CLASSES)
    for lab, s in zip(layouts, batch, strict=True):
        cm.update(lab, s.labels)
    relations = [r.relation for r in readings if r.relation is not None]
    return {"count_accuracy": float(np.mean([r.count for r in readings])),
            "relation_accuracy": float(np.mean(relations)) if relations else float("nan"),
            "miou_vs_true_layout": cm.miou(), "exact": float(np.mean([r.exact for r in readings]))}


def evaluate(base_dir: Path, controlnets: dict[str, Path], out_dir: Path, learned: Path | None = None,
             learned_without_mentions: Path | None = None, settings: EvalSettings = EvalSettings()) -> dict:
    """Scores of every condition whose parts exist, the planners' own scores, and a sample grid (grid.png)."""
    batch = scenes(settings.scene_seed, settings.prompts)
    sources = layout_sources(learned, learned_without_mentions)
    layouts = {name: fn(batch) for name, fn in sources.items()}
    tokenizer, text_encoder = load_text_side(base_dir)
    with torch.no_grad():
        cond = encode_text(tokenizer, text_encoder, [s.caption for s in batch])
        uncond = encode_text(tokenizer, text_encoder, [""])
    sampler = DiffusionSampler.from_folder(base_dir, "dpmsolver++")
    nets = {key: load_controlnet(path) for key, path in controlnets.items()}
    palette = get_palette(settings.palette)
    results: dict[str, dict] = {"conditions": {}, "planners": {}}
    pictures: dict[str, list[Image.Image]] = {}
    for name, maps in layouts.items():
        results["planners"][name] = planner_scores(maps, batch)
    for c in CONDITIONS:
        if (c.planner is not None and c.planner not in layouts) or (c.controlnet is not None and c.controlnet not in nets):
            continue
        hint = None
        if c.planner is not None:
            hint = torch.from_numpy(np.stack([palette.render(m) for m in layouts[c.planner]])).permute(0, 3, 1, 2)
            hint = hint.float() / 255.0
        generator = torch.Generator().manual_seed(settings.noise_seed)  # the same noise for every condition
        images = sampler.sample(cond, uncond, settings.steps, settings.guidance, SIZE, generator=generator,
                                controlnet=nets.get(c.controlnet), hint=hint)
        pictures[c.name] = to_pil(images)
        results["conditions"][c.name] = score_pictures(
            pictures[c.name], batch, layouts[c.planner] if c.planner is not None else None)
        log.info("%s: %s", c.name, {k: round(v, 3) for k, v in results["conditions"][c.name].items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    _grid(out_dir / "grid.png", batch, layouts, pictures, palette)
    return results


def _grid(path: Path, batch: Sequence[LayoutScene], layouts: dict, pictures: dict, palette, rows: int = 8,
          scale: int = 3) -> None:
    """One row per prompt: for each condition its layout (when it has one) and its picture, upscaled."""
    tiles_per_row = []
    for i in range(min(rows, len(batch))):
        row = []
        for c in CONDITIONS:
            if c.name not in pictures:
                continue
            layout = palette.render(layouts[c.planner][i]) if c.planner else np.full((SIZE, SIZE, 3), 255, np.uint8)
            row += [layout, np.asarray(pictures[c.name][i])]
        tiles_per_row.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles_per_row, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
