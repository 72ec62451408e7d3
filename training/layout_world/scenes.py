"""Procedural layout-world scenes: up to five things of one or two classes in a row on a ground, with counts and a
left/right relation that the caption states ("two sheep to the left of a car on the grass").

Every scene is three aligned things: the COCO-Stuff label map and instance map (what a layout planner must produce and
what the ControlNet is given), the caption (what the text-to-image model is given) and the picture, which paints each
class in its own flat colour (`APPEARANCE`, not the layout palette's), so the scorer can read any generated picture
back into a label map exactly. Things of one class never touch (a one-pixel gap), so they stay countable.

Classes and words are COCO-Stuff's and the rule-based planner's (kosmos_g_core.layout): the same prompts run through
both planners and the learned one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from kosmos_g_core.layout import raster
from kosmos_g_core.layout.labels import CLASS_ID, IGNORE

SIZE = 32  # picture and label-map side
GROUNDS = ("grass", "sand", "road")
THINGS = ("sheep", "dog", "car", "cow")
# What each class looks like in a picture (RGB); far apart, so nearest-colour reading is exact on clean pictures.
APPEARANCE: dict[str, tuple[int, int, int]] = {
    "grass": (70, 150, 60), "sand": (225, 205, 145), "road": (95, 95, 100),
    "sheep": (250, 250, 250), "dog": (150, 75, 25), "car": (225, 35, 35), "cow": (25, 25, 25),
}
PLURAL = {"sheep": "sheep", "dog": "dogs", "car": "cars", "cow": "cows"}
NUMBER_WORD = {1: "a", 2: "two", 3: "three"}
# (width, height) as fractions of the side, and the outline the generator draws.
_SIZE_SHAPE = {"sheep": (0.2, 0.14, "ellipse"), "dog": (0.15, 0.12, "ellipse"), "car": (0.27, 0.14, "round"),
               "cow": (0.23, 0.16, "ellipse")}
RELATIONS = ("left_of", "right_of")
TWO_CLASS_PROB = 0.6
MAX_FIRST, MAX_SECOND = 3, 2


@dataclass(frozen=True)
class LayoutScene:
    ground: str
    counts: tuple[tuple[str, int], ...]  # ((class, count), ...) in caption order; one or two classes
    relation: str | None  # "left_of" | "right_of": the first class relative to the second; None for one class
    labels: np.ndarray  # (S, S) uint8 COCO-Stuff ids
    instances: np.ndarray  # (S, S) int32, 0 = ground

    @property
    def caption(self) -> str:
        phrases = [_noun(name, n) for name, n in self.counts]
        body = phrases[0]
        if self.relation is not None:
            body += f" to the {self.relation.split('_')[0]} of {phrases[1]}"
        return f"{body} on the {self.ground}"


def _noun(name: str, n: int) -> str:
    return f"{NUMBER_WORD[n]} {name if n == 1 else PLURAL[name]}"


def make_scene(rng: random.Random, size: int = SIZE) -> LayoutScene:
    """One scene drawn from `rng` (all randomness comes from it, so a seeded rng gives a fixed data set)."""
    ground = rng.choice(GROUNDS)
    if rng.random() < TWO_CLASS_PROB:
        first, second = rng.sample(THINGS, 2)
        counts = ((first, rng.randint(1, MAX_FIRST)), (second, rng.randint(1, MAX_SECOND)))
        relation = rng.choice(RELATIONS)
    else:
        counts = ((rng.choice(THINGS), rng.randint(1, MAX_FIRST)),)
        relation = None
    # Left-to-right order of the things: the first class's group left of the second's, or right of it.
    groups = [[name] * n for name, n in counts]
    if relation == "right_of":
        groups.reverse()
    row = [name for group in groups for name in group]
    scale = rng.uniform(0.85, 1.15)
    widths = [_SIZE_SHAPE[name][0] * scale for name in row]
    gap_min = 1.5 / size
    fit = (1.0 - 2 / size - gap_min * (len(row) - 1)) / sum(widths)
    if fit < 1.0:  # shrink the whole row so it fits the frame with its gaps
        scale *= fit
        widths = [w * fit for w in widths]
    slack = 1.0 - 2 / size - sum(widths) - gap_min * (len(row) - 1)
    cuts = sorted(rng.random() for _ in range(len(row)))  # random split of the slack: before, between, (after)
    shares = [cuts[0]] + [b - a for a, b in zip(cuts, cuts[1:], strict=False)]
    baseline = rng.uniform(0.55, 0.85)
    labels = np.full((size, size), CLASS_ID[ground], dtype=np.uint8)
    instances = np.zeros((size, size), dtype=np.int32)
    x = 1 / size
    for k, (name, w) in enumerate(zip(row, widths, strict=True)):
        x += slack * shares[k] + (gap_min if k else 0.0)
        h = _SIZE_SHAPE[name][1] * scale
        y1 = min(0.97, baseline + rng.uniform(-0.04, 0.04))
        mask = _shape(size, _SIZE_SHAPE[name][2], x, y1 - h, x + w, y1)
        same = np.isin(labels, [CLASS_ID[name]])
        mask &= ~raster.dilate(same, 1)  # instances of one class never touch
        labels[mask] = CLASS_ID[name]
        instances[mask] = k + 1
        x += w
    return LayoutScene(ground, counts, relation, labels, instances)


def _shape(size: int, shape: str, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    if shape == "ellipse":
        return raster.ellipse(size, size, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    return raster.rounded_rect(size, size, x0, y0, x1, y1, 0.3 * (y1 - y0))


def scenes(seed: int, count: int, size: int = SIZE) -> list[LayoutScene]:
    """Scene set `seed` (training sets and held-out sets are different seeds)."""
    rng = random.Random(f"layout_world/{seed}")
    return [make_scene(rng, size) for _ in range(count)]


# (S, S) COCO-Stuff id -> RGB lookup of the picture colours.
_LUT = np.zeros((256, 3), dtype=np.uint8)
for _name, _rgb in APPEARANCE.items():
    _LUT[CLASS_ID[_name]] = _rgb
_LUT[IGNORE] = (0, 0, 0)


def render(labels: np.ndarray) -> np.ndarray:
    """The picture of a label map: (S, S, 3) uint8, each class in its APPEARANCE colour."""
    return _LUT[labels]


def vocabulary() -> list[str]:
    """Every word a layout-world caption can contain (for the base model's CLIP tokenizer)."""
    words = {"a", "two", "three", "to", "the", "left", "right", "of", "on", *GROUNDS, *THINGS, *PLURAL.values()}
    return sorted(words)
