"""What the layout nodes do with their inputs, as plain functions (no ComfyUI import): ComfyUI tensors in and out,
and the user-facing error messages.

IMAGE = (B,H,W,3) float in [0,1]; MASK = (E,H,W) float in [0,1]; a CONDITIONING's tensor is (B,L,768).
"""

from __future__ import annotations

import difflib
from dataclasses import replace

import numpy as np
import torch

from ..kosmos_g_core.layout.layout import Layout, layout_from_label_map
from ..kosmos_g_core.layout.palettes import PaletteError, parse_layout_image
from ..kosmos_g_core.layout.planner import LayoutPlanner, RuleBasedPlanner
from ..kosmos_g_core.layout.prompt_parser import parse_prompt, tokenize
from ..kosmos_g_core.layout.vocabulary import known_words, resolve_class


class LayoutNodeError(ValueError):
    """A user-facing problem with a layout node's inputs (the message says what to change)."""


def plan_layout(text: str, width: int, height: int, planner: LayoutPlanner | None = None, *,
                conditioning: torch.Tensor | None = None, sample: bool = False, seed: int = 0) -> Layout:
    """Prompt -> Layout with the given planner (the rule-based one when None)."""
    if not text.strip():
        raise LayoutNodeError("the layout prompt is empty: describe the scene, e.g. 'two sheep on the grass under "
                              "the sky'")
    planner = planner or RuleBasedPlanner()
    if planner.name == "rule_based" and not parse_prompt(text).mentions:
        words = [w for w in tokenize(text) if w.isalpha() and len(w) > 2]
        close = sorted({m for w in words for m in difflib.get_close_matches(w, known_words(), n=2, cutoff=0.75)})
        hint = f" Close known words: {', '.join(close)}." if close else ""
        raise LayoutNodeError(
            f"no known object or stuff class in {text!r}: the rule-based planner places COCO-Stuff nouns (sheep, "
            f"car, tree, house, grass, road/street, sky, mountain, sea ...).{hint}")
    kwargs = {"width": width, "height": height, "seed": seed, "conditioning": conditioning}
    if sample and planner.name != "rule_based":
        kwargs["sample"] = True
    return planner.plan(text, **kwargs)


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> IMAGE (1,H,W,3) float in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div(255.0)[None]


def render_image(layout: Layout, palette: str) -> torch.Tensor:
    return image_tensor(layout.render(palette))


def masks_tensor(layout: Layout) -> torch.Tensor:
    """MASK (E,H,W), one per entity; a single empty mask when the layout has no entity (a MASK must not be empty)."""
    m = layout.masks()
    if m.shape[0] == 0:
        m = np.zeros((1, layout.height, layout.width), dtype=np.float32)
    return torch.from_numpy(m)


def layout_from_image(image: torch.Tensor, palette: str = "auto", prompt: str = "") -> Layout:
    """IMAGE (first of the batch) in a segmentation palette -> Layout (entities from connected components; names
    from the prompt's nouns when given)."""
    if image.ndim == 4:
        image = image[0]
    try:
        labels, pal = parse_layout_image(image.detach().cpu().numpy(), palette)
    except PaletteError as e:
        raise LayoutNodeError(f"Palette Image to Layout: {e}") from e
    layout = layout_from_label_map(labels, prompt=prompt, planner=f"parsed:{pal.name}", min_pixels=4)
    if prompt:
        words = {m.class_id: m.word for m in parse_prompt(prompt).mentions}
        ents = tuple(replace(e, name=words.get(e.class_id, e.name)) for e in layout.entities)
        layout = Layout(layout.label_map, layout.instance_map, ents, prompt, layout.planner, dict(layout.meta))
    return layout


def pick_entity(layout: Layout, entity: str) -> list[int]:
    """Entity selector -> entity indices: a number (1-based position in the entity list), a label ('sheep 2/2'),
    or a name / class ('sheep', 'street', 'sky': every instance). Clear errors for unknown or absent classes."""
    key = entity.strip()
    if not key:
        raise LayoutNodeError("entity is empty: give a name from the entity list (e.g. 'sheep'), a label "
                              "('sheep 2/2') or a 1-based number")
    available = ", ".join(repr(e.label) for e in layout.entities) or "none"
    if key.isdigit():
        k = int(key)
        if not 1 <= k <= len(layout.entities):
            raise LayoutNodeError(f"entity number {k} is out of range: the layout has {len(layout.entities)} "
                                  f"entities ({available})")
        return [k - 1]
    found = layout.find(key)
    if found:
        return found
    try:
        cid = resolve_class(key)
    except KeyError as e:
        raise LayoutNodeError(f"{e.args[0]} Entities in this layout: {available}.") from None
    found = [i for i, e in enumerate(layout.entities) if e.class_id == cid]
    if not found:
        raise LayoutNodeError(f"the layout has no {key!r} (class {cid}); its entities are: {available}")
    return found


def entity_mask(layout: Layout, entity: str, width: int = 0, height: int = 0) -> torch.Tensor:
    """MASK (1,H,W) of the chosen entity (all its instances when a class name is given); resized with nearest
    neighbour to width x height when those are non-zero (e.g. the latent image size in pixels)."""
    idx = pick_entity(layout, entity)
    mask = np.zeros((layout.height, layout.width), dtype=np.float32)
    for i in idx:
        mask[layout.entity_mask(i)] = 1.0
    if width and height and (width, height) != (layout.width, layout.height):
        ys = np.arange(height) * layout.height // height
        xs = np.arange(width) * layout.width // width
        mask = mask[ys][:, xs]
    return torch.from_numpy(np.ascontiguousarray(mask))[None]

