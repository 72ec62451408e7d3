"""The layout world's exact scorer: a picture is read back into a label map by nearest appearance colour, then
presence, counts, the left/right relation and the ground are checked against what the prompt asked, and the map is
compared with the layout the picture was generated from (faithfulness mIoU).

Reading: every pixel of the (32 x 32, bilinear-resized) picture gets the class of the nearest `APPEARANCE` colour.
A thing is a connected region (4-neighbourhood) of its class of at least MIN_THING_PIXELS pixels; smaller specks
(blurred edges, noise) are not things. The ground is the most frequent ground class. Relations compare the centroid
columns of the two classes (kosmos_g_core.layout.metrics.relation_holds, NSR-1K style).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kosmos_g_core.layout.labels import CLASS_ID, NUM_CLASSES
from kosmos_g_core.layout.layout import connected_components
from kosmos_g_core.layout.metrics import ConfusionMatrix, relation_holds

from .scenes import APPEARANCE, GROUNDS, SIZE, THINGS, LayoutScene

MIN_THING_PIXELS = 3
_NAMES = list(APPEARANCE)
_COLOURS = np.asarray([APPEARANCE[n] for n in _NAMES], dtype=np.float32)  # (K, 3)
_IDS = np.asarray([CLASS_ID[n] for n in _NAMES], dtype=np.uint8)


def read_labels(picture: Image.Image | np.ndarray) -> np.ndarray:
    """(S, S) uint8 COCO-Stuff label map of a picture (PIL image or (H, W, 3) uint8 array)."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.BILINEAR)
    px = np.asarray(image.convert("RGB"), dtype=np.float32)  # (S, S, 3)
    dist = ((px[:, :, None, :] - _COLOURS[None, None]) ** 2).sum(-1)  # (S, S, K)
    return _IDS[dist.argmin(-1)]


def thing_counts(labels: np.ndarray) -> dict[str, int]:
    """Things of each class in a label map: connected regions of at least MIN_THING_PIXELS pixels."""
    out = {}
    for name in THINGS:
        comp, n = connected_components(labels == CLASS_ID[name])
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        out[name] = int((sizes >= MIN_THING_PIXELS).sum())
    return out


def ground_of(labels: np.ndarray) -> str:
    counts = [(int((labels == CLASS_ID[g]).sum()), g) for g in GROUNDS]
    return max(counts)[1]


@dataclass(frozen=True)
class Reading:
    presence: float  # share of the asked classes that appear (>= 1 thing)
    count: float  # share of the asked classes with exactly the asked count
    relation: float | None  # 1/0 when the prompt states a relation, else None
    ground: bool  # the asked ground is the picture's (text fidelity)
    extra: int  # things of classes the prompt did not ask for
    exact: bool  # every count, the relation and the ground right, nothing extra


def read_scene(labels: np.ndarray, scene: LayoutScene) -> Reading:
    """What a label map (read from a generated picture) gets right of what `scene`'s prompt asks."""
    found = thing_counts(labels)
    asked = dict(scene.counts)
    presence = float(np.mean([found[n] >= 1 for n in asked]))
    count = float(np.mean([found[n] == k for n, k in asked.items()]))
    relation = None
    if scene.relation is not None:
        (first, _), (second, _) = scene.counts
        relation = float(relation_holds(labels, CLASS_ID[first], scene.relation, CLASS_ID[second]))
    ground = ground_of(labels) == scene.ground
    extra = sum(v for n, v in found.items() if n not in asked)
    exact = count == 1.0 and relation in (None, 1.0) and ground and extra == 0
    return Reading(presence, count, relation, ground, extra, exact)


def score_pictures(pictures: Sequence[Image.Image | np.ndarray], scenes: Sequence[LayoutScene],
                   layouts: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Mean scores of pictures generated for `scenes`' prompts; with `layouts` (the (S, S) label maps they were
    generated from) also the dataset-level faithfulness mIoU between each picture's reading and its layout."""
    readings, cm = [], ConfusionMatrix(NUM_CLASSES)
    for k, (picture, scene) in enumerate(zip(pictures, scenes, strict=True)):
        labels = read_labels(picture)
        readings.append(read_scene(labels, scene))
        if layouts is not None:
            cm.update(labels, np.asarray(layouts[k], dtype=np.uint8))
    relations = [r.relation for r in readings if r.relation is not None]
    out = {
        "presence": float(np.mean([r.presence for r in readings])),
        "count_accuracy": float(np.mean([r.count for r in readings])),
        "relation_accuracy": float(np.mean(relations)) if relations else float("nan"),
        "text_fidelity": float(np.mean([r.ground for r in readings])),
        "extra_things": float(np.mean([r.extra for r in readings])),
        "exact": float(np.mean([r.exact for r in readings])),
    }
    if layouts is not None:
        out["faithfulness_miou"] = cm.miou()
    return out
