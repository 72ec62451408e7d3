"""The Layout value: label map + instance map + entity list, shared by both planners, the nodes and the metrics."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .labels import COCO_STUFF_CLASSES, IGNORE, display_name, is_thing
from .palettes import Palette, get_palette


@dataclass(frozen=True)
class Entity:
    """One drawn entity: an instance of a thing ("sheep" #2 of 2) or a stuff region ("sky").

    instance: the value of this entity in Layout.instance_map (1-based); box: (x0, y0, x1, y1) in pixels, end
    exclusive, of the visible mask (the planned shape if it ended fully occluded); count: how many instances the
    mention asked for; index: 0-based position among them; mention: index of the noun phrase in the prompt.
    """

    name: str
    class_id: int
    instance: int
    box: tuple[int, int, int, int]
    count: int = 1
    index: int = 0
    mention: int = -1

    @property
    def class_name(self) -> str:
        return COCO_STUFF_CLASSES[self.class_id]

    @property
    def label(self) -> str:
        """'sheep 2/2', 'sky' - unique enough for a dropdown or a report line."""
        return f"{self.name} {self.index + 1}/{self.count}" if self.count > 1 else self.name


@dataclass(frozen=True, eq=False)
class Layout:
    """label_map (H,W) uint8 COCO-Stuff-171 ids, 255 unlabelled; instance_map (H,W) int32, 0 = no entity, k = the
    entity with instance k; entities in prompt order (instances of one mention consecutive)."""

    label_map: np.ndarray
    instance_map: np.ndarray
    entities: tuple[Entity, ...] = ()
    prompt: str = ""
    planner: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.label_map.shape[1])

    def entity_mask(self, i: int) -> np.ndarray:
        """(H,W) bool mask of entity i (index into `entities`)."""
        return self.instance_map == self.entities[i].instance

    def masks(self) -> np.ndarray:
        """(E,H,W) float32 0/1, one mask per entity in order; (0,H,W) when there are none."""
        if not self.entities:
            return np.zeros((0, self.height, self.width), dtype=np.float32)
        ids = np.array([e.instance for e in self.entities], dtype=np.int32)
        return (self.instance_map[None] == ids[:, None, None]).astype(np.float32)

    def render(self, palette: str | Palette = "coco_panoptic_133") -> np.ndarray:
        """(H,W,3) uint8 image in a palette, exact colours."""
        return get_palette(palette).render(self.label_map)

    def classes_present(self) -> list[int]:
        return [int(c) for c in np.unique(self.label_map) if c != IGNORE]

    def find(self, name: str) -> list[int]:
        """Indices of entities whose name, class name, display name or label equals `name` (case-insensitive)."""
        key = name.strip().lower()
        return [
            i
            for i, e in enumerate(self.entities)
            if key in (e.name.lower(), e.class_name, display_name(e.class_id), e.label.lower())
        ]

    def to_dict(self) -> dict:
        """JSON-friendly entity list (no arrays)."""
        return {
            "prompt": self.prompt,
            "planner": self.planner,
            "size": [self.width, self.height],
            "entities": [
                {**asdict(e), "class_name": e.class_name, "thing": is_thing(e.class_id), "label": e.label}
                for e in self.entities
            ],
        }

    def entity_text(self) -> str:
        return json.dumps(self.to_dict()["entities"], indent=1)

    def resized(self, width: int, height: int) -> Layout:
        """Nearest-neighbour resize (labels are never interpolated); boxes are rescaled."""
        ys = (np.arange(height) * self.height // height).clip(0, self.height - 1)
        xs = (np.arange(width) * self.width // width).clip(0, self.width - 1)
        sx, sy = width / self.width, height / self.height
        ents = tuple(
            Entity(e.name, e.class_id, e.instance, _scale_box(e.box, sx, sy, width, height), e.count, e.index, e.mention)
            for e in self.entities
        )
        return Layout(
            self.label_map[ys][:, xs], self.instance_map[ys][:, xs], ents, self.prompt, self.planner, dict(self.meta)
        )


def _scale_box(box: tuple[int, int, int, int], sx: float, sy: float, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        min(int(x0 * sx), w - 1), min(int(y0 * sy), h - 1), max(int(round(x1 * sx)), 1), max(int(round(y1 * sy)), 1)
    )


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) end-exclusive bounding box of a bool mask, None when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool mask: (labels (H,W) int32 with 0 = background, count). Pure numpy/scipy."""
    try:
        from scipy import ndimage

        labels, n = ndimage.label(mask)
        return labels.astype(np.int32), int(n)
    except ImportError:  # ComfyUI installs need not have scipy: a small union-find fallback.
        return _components_fallback(mask)


def _components_fallback(mask: np.ndarray) -> tuple[np.ndarray, int]:
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            n += 1
            stack = [(y, x)]
            labels[y, x] = n
            while stack:
                cy, cx = stack.pop()
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = n
                        stack.append((ny, nx))
    return labels, n


def layout_from_label_map(
    label_map: np.ndarray,
    instance_map: np.ndarray | None = None,
    *,
    prompt: str = "",
    planner: str = "",
    min_pixels: int = 1,
) -> Layout:
    """Build entities from a label map alone (e.g. one parsed from a palette image).

    Stuff classes become one entity each; thing instances come from `instance_map` when given, otherwise from
    4-connected components (which is why planners keep same-class instances apart). Components smaller than
    `min_pixels` are dropped from the entity list (they stay in the label map).
    """
    label_map = np.asarray(label_map, dtype=np.uint8)
    out = np.zeros(label_map.shape, dtype=np.int32)
    entities: list[Entity] = []
    for c in [int(c) for c in np.unique(label_map) if c != IGNORE]:
        cls_mask = label_map == c
        if is_thing(c):
            if instance_map is not None:
                parts = [instance_map == k for k in np.unique(instance_map[cls_mask]) if k != 0]
                leftover = cls_mask & (instance_map == 0)
                if leftover.any():
                    parts.append(leftover)
            else:
                comp, n = connected_components(cls_mask)
                parts = [comp == k for k in range(1, n + 1)]
            parts = [p & cls_mask for p in parts if (p & cls_mask).sum() >= min_pixels]
        else:
            parts = [cls_mask] if cls_mask.sum() >= min_pixels else []
        parts.sort(key=lambda p: (mask_box(p)[0], mask_box(p)[1]))
        for k, part in enumerate(parts):
            inst = len(entities) + 1
            out[part] = inst
            entities.append(Entity(display_name(c), c, inst, mask_box(part), len(parts), k))
    return Layout(label_map, out, tuple(entities), prompt, planner)
