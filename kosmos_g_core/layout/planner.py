"""The weight-free, deterministic prompt-to-layout planner, and the interface both planners share.

Scene model (all in normalised [0,1] coordinates, y down):
* stuff in bands: a backdrop (sky, or wall indoors) on top, far stuff (mountain, hill) as a ridge on the horizon,
  the first-mentioned ground (grass, road, sea, sand ...) below the horizon; further grounds become strips (a road
  across the lower middle, a sea just under the horizon, anything else along the bottom);
* things, and object-like stuff (tree, house, bush, tent ...), stand on a ground: their bottom edge (baseline) lies
  inside their support band, they shrink with distance to the horizon, and they are painted far to near, so what is
  "in front of" something is lower, larger and drawn over it, and what is "behind" is higher, smaller and occluded;
* things that live in the sky (clouds, birds, planes, kites) float inside the sky band;
* parts (roof, window, door) attach to a host named with "with" / "on" / "in front of" (roof above the house body,
  window on the facade, door at its foot);
* instances of one mention stand side by side, and no two instances of a class ever touch (a one-pixel gap), so a
  semantic map still shows how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import raster
from .labels import CLASS_ID, IGNORE
from .layout import Entity, Layout, mask_box
from .prompt_parser import Mention, ParsedPrompt, parse_prompt


class LayoutPlanner(Protocol):
    """Anything that turns a prompt (and optionally a (1,77,768) conditioning) into a Layout."""

    name: str

    def plan(self, prompt: str, *, width: int = 512, height: int = 512, seed: int = 0, conditioning=None) -> Layout:
        ...


def _ids(*names: str) -> frozenset[int]:
    return frozenset(CLASS_ID[n] for n in names)


BACKDROP = _ids("sky-other", "fog", "wall-other", "wall-brick", "wall-concrete", "wall-panel", "wall-stone",
                "wall-tile", "wall-wood", "ceiling-other", "ceiling-tile")
IN_SKY = _ids("clouds", "bird", "airplane", "kite")
FAR = _ids("mountain", "hill")
GROUND = _ids("grass", "road", "sea", "sand", "snow", "dirt", "river", "playingfield", "pavement", "gravel", "mud",
              "water-other", "railroad", "moss", "straw", "ground-other", "floor-other", "floor-wood", "floor-tile",
              "floor-marble", "floor-stone", "carpet", "rug", "mat", "platform")
PARTS = _ids("roof", "window-other", "window-blind", "door-stuff")
HOSTS = _ids("house", "building-other", "skyscraper", "tent", "bus", "train", "car", "truck")
BUILDINGS = _ids("house", "building-other", "skyscraper", "tent")
TALL = BUILDINGS | _ids("tree", "giraffe", "person", "bus", "train", "traffic light")
WATER = _ids("sea", "river", "water-other")

# class name -> (height at the reference depth, pixel aspect w/h, shape)
_PRIORS: dict[str, tuple[float, float, str]] = {
    "person": (0.36, 0.42, "ellipse"), "bicycle": (0.16, 1.6, "round"), "car": (0.17, 2.0, "round"),
    "motorcycle": (0.17, 1.6, "round"), "airplane": (0.09, 2.6, "ellipse"), "bus": (0.24, 2.3, "round"),
    "train": (0.22, 3.2, "round"), "truck": (0.22, 2.0, "round"), "boat": (0.13, 2.2, "ellipse"),
    "traffic light": (0.22, 0.3, "box"), "fire hydrant": (0.1, 0.6, "round"), "stop sign": (0.14, 0.7, "round"),
    "bench": (0.11, 2.2, "box"), "bird": (0.06, 1.6, "ellipse"), "cat": (0.12, 1.3, "ellipse"),
    "dog": (0.14, 1.4, "ellipse"), "horse": (0.26, 1.3, "ellipse"), "sheep": (0.16, 1.45, "ellipse"),
    "cow": (0.2, 1.5, "ellipse"), "elephant": (0.3, 1.4, "ellipse"), "bear": (0.24, 1.3, "ellipse"),
    "zebra": (0.24, 1.4, "ellipse"), "giraffe": (0.46, 0.7, "ellipse"), "umbrella": (0.18, 1.5, "ellipse"),
    "kite": (0.08, 1.0, "ellipse"), "chair": (0.2, 0.7, "box"), "couch": (0.2, 2.0, "round"),
    "potted plant": (0.16, 0.8, "ellipse"), "bed": (0.2, 1.8, "box"), "dining table": (0.18, 1.8, "box"),
    "tv": (0.16, 1.6, "box"), "clouds": (0.09, 2.6, "ellipse"), "tree": (0.5, 0.6, "tree"),
    "bush": (0.14, 1.7, "ellipse"), "house": (0.36, 1.3, "box"), "building-other": (0.5, 0.9, "box"),
    "skyscraper": (0.7, 0.4, "box"), "tent": (0.2, 1.4, "tent"), "rock": (0.12, 1.5, "ellipse"),
    "flower": (0.07, 1.0, "ellipse"), "fence": (0.1, 5.0, "box"), "bridge": (0.14, 4.0, "box"),
    "roof": (0.12, 1.5, "roof"), "window-other": (0.08, 1.0, "box"), "window-blind": (0.08, 1.0, "box"),
    "door-stuff": (0.12, 0.5, "box"),
}
_DEFAULT_PRIOR = (0.2, 1.0, "round")
_REF_BASELINE = 0.8  # baseline at which objects have their prior height
_GAP = 0.02  # horizontal gap between instances


@dataclass
class _Item:
    """A placed object instance, in normalised coordinates."""

    mention: Mention
    index: int
    cx: float
    baseline: float
    h: float
    w: float
    shape: str
    host: int | None = None  # item position of the host, for parts
    in_sky: bool = False
    mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.cx - self.w / 2, self.baseline - self.h, self.cx + self.w / 2, self.baseline


def _prior(class_id: int) -> tuple[float, float, str]:
    from .labels import COCO_STUFF_CLASSES

    return _PRIORS.get(COCO_STUFF_CLASSES[class_id], _DEFAULT_PRIOR)


class RuleBasedPlanner:
    """Deterministic planner: same prompt and size -> the same layout, no weights, no randomness (seed unused)."""

    name = "rule_based"

    def plan(self, prompt: str, *, width: int = 512, height: int = 512, seed: int = 0, conditioning=None) -> Layout:
        parsed = parse_prompt(prompt)
        return plan_parsed(parsed, width=width, height=height)


def plan_parsed(parsed: ParsedPrompt, *, width: int, height: int) -> Layout:
    h, w = height, width
    label = np.full((h, w), IGNORE, dtype=np.uint8)
    inst = np.zeros((h, w), dtype=np.int32)
    mentions = parsed.mentions
    rel_by_subject: dict[int, list[tuple[str, int]]] = {}
    for r in parsed.relations:
        rel_by_subject.setdefault(r.subject, []).append((r.relation, r.object))

    backdrop = [m for m in mentions if m.class_id in BACKDROP]
    far = [m for m in mentions if m.class_id in FAR]
    grounds = [m for m in mentions if m.class_id in GROUND]
    in_sky = [m for m in mentions if m.class_id in IN_SKY and (backdrop or not grounds)]
    parts = [m for m in mentions if m.class_id in PARTS and _host_of(m, rel_by_subject, mentions) is not None]
    placed_ids = {m.index for m in backdrop + far + grounds + in_sky + parts}
    objects = [m for m in mentions if m.index not in placed_ids]

    horizon = 0.58 if far else 0.5
    tall = any(m.class_id in TALL for m in objects)
    if not backdrop and not far and grounds and not tall:
        horizon = 0.0  # "dogs on the grass": a view onto the ground, which fills the frame
    # --- stuff bands; entity instance ids are assigned per mention afterwards -----------------------------------
    band_masks: dict[int, np.ndarray] = {}
    band_range: dict[int, tuple[float, float]] = {}
    for m in backdrop:
        bottom = horizon if (grounds or far) else 1.0
        band_masks[m.index] = raster.rect(h, w, 0, 0, 1, bottom)
        band_range[m.index] = (0.0, bottom)
    for k, m in enumerate(far):
        # A ridge across the width with its peak off-centre; later far mentions sit lower and in front.
        top = 0.2 + 0.1 * k
        px = 0.5 + (0.2 if k % 2 else -0.05)
        bottom = horizon if grounds else 1.0
        pts = [(0.0, bottom), (0.0, bottom - 0.12), (px, top), (1.0, bottom - 0.18), (1.0, bottom)]
        band_masks[m.index] = raster.polygon(h, w, pts)
        band_range[m.index] = (top, bottom)
    for k, m in enumerate(grounds):
        if k == 0:
            lo, hi = (horizon, 1.0)
        elif m.class_id == CLASS_ID["road"] or m.class_id == CLASS_ID["railroad"]:
            lo, hi = (horizon + 0.42 * (1 - horizon), horizon + 0.78 * (1 - horizon))
        elif m.class_id in WATER:
            lo, hi = (horizon, horizon + 0.3 * (1 - horizon))
        else:
            lo, hi = (1.0 - 0.16 * (1 - horizon), 1.0)
        band_masks[m.index] = raster.rect(h, w, 0, lo, 1, hi)
        band_range[m.index] = (lo, hi)
    # Far stuff with no sky: it fills everything above the horizon.
    if far and not backdrop:
        band_masks[far[0].index] |= raster.rect(h, w, 0, 0, 1, horizon if grounds else 1.0)
        band_range[far[0].index] = (0.0, band_range[far[0].index][1])

    # --- object items -------------------------------------------------------------------------------------------
    main_ground = grounds[0].index if grounds else None
    items: list[_Item] = []
    item_of: dict[int, list[int]] = {}
    for m in objects:
        ph, aspect, shape = _prior(m.class_id)
        support = main_ground
        baseline = None
        depth = 1.0
        for rel, obj in rel_by_subject.get(m.index, []):
            if obj in band_range and mentions[obj].class_id in GROUND and rel in ("on", "in", "with", "along"):
                support = obj
                if rel == "along":
                    baseline = band_range[obj][0] + 0.02 * (1 - horizon)
            elif rel in ("in_front_of", "behind") and mentions[obj].class_id not in FAR and obj not in band_range:
                depth = 1.15 if rel == "in_front_of" else 0.8
        if baseline is None:
            if support is not None:
                lo, hi = band_range[support]
                # buildings stand at the far side of their ground, everything else in its nearer part
                baseline = lo + (0.3 if m.class_id in BUILDINGS else 0.6) * (hi - lo)
            else:
                baseline = 0.92
        if depth > 1.0:
            baseline = min(0.97, baseline + 0.08)
        elif depth < 1.0:
            baseline = max(horizon + 0.04, baseline - 0.12)
        persp = float(np.clip((baseline - horizon) / max(_REF_BASELINE - horizon, 1e-3), 0.55, 1.4))
        if horizon == 0.0:
            persp = 1.0
            if baseline is not None and support == main_ground:
                baseline = 0.75
        oh = ph * persp * depth
        ow = oh * aspect * h / w
        item_of[m.index] = []
        for k in range(m.count):
            item_of[m.index].append(len(items))
            items.append(_Item(m, k, 0.5, baseline, oh, ow, shape))
    _arrange(items, item_of, objects, rel_by_subject)

    for m in in_sky:
        ph, aspect, shape = _prior(m.class_id)
        sky_bottom = horizon if (grounds or far) else 1.0
        top = 0.04 if not far else 0.03
        item_of[m.index] = []
        oh = min(ph, 0.4 * (sky_bottom - top))
        ow = oh * aspect * h / w
        for k in range(m.count):
            cx = (k + 1) / (m.count + 1) if m.count > 1 else 0.3
            base = top + oh + 0.04 + 0.05 * (k % 2)
            item_of[m.index].append(len(items))
            items.append(_Item(m, k, cx, base, oh, ow, shape, in_sky=True))

    for m in parts:
        host_mention = _host_of(m, rel_by_subject, mentions)
        host_items = item_of.get(host_mention, [])
        if not host_items:
            continue
        host = items[host_items[0]]
        item_of[m.index] = []
        x0, y0, x1, y1 = host.box
        hw, hh = x1 - x0, y1 - y0
        for k in range(m.count):
            cid = m.class_id
            if cid == CLASS_ID["roof"]:
                it = _Item(m, k, host.cx, y0, 0.5 * hh, hw + 0.04, "roof", host=host_items[0])
            elif cid == CLASS_ID["door-stuff"]:
                it = _Item(m, k, host.cx, y1, 0.45 * hh, 0.2 * hw, "box", host=host_items[0])
            else:  # windows: a row across the upper facade
                n = m.count
                cx = x0 + hw * (k + 1) / (n + 1)
                ww = min(0.28 * hw, 0.8 * hw / (n + 1))
                it = _Item(m, k, cx, y0 + 0.62 * hh, 0.3 * hh, ww, "box", host=host_items[0])
            item_of[m.index].append(len(items))
            items.append(it)

    # --- paint: bands, then objects far to near, parts right after their host ------------------------------------
    for m in backdrop + far + grounds[:1] + grounds[1:]:
        if m.index in band_masks:
            label[band_masks[m.index]] = m.class_id
    order = sorted(
        (i for i, it in enumerate(items) if it.host is None),
        key=lambda i: (not items[i].in_sky, items[i].baseline, items[i].mention.index, items[i].index),
    )
    children: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        if it.host is not None:
            children.setdefault(it.host, []).append(i)
    paint_order: list[int] = []
    for i in order:
        paint_order.append(i)
        paint_order.extend(children.get(i, []))

    # Each item gets a temporary instance id; final ids follow mention order.
    tmp_inst = np.zeros((h, w), dtype=np.int32)
    for i in paint_order:
        it = items[i]
        mask = _shape_mask(it, h, w)
        if it.in_sky:
            sky_like = np.isin(label, list(BACKDROP)) | (label == IGNORE)
            mask &= sky_like | np.isin(label, list(IN_SKY))
        for j in paint_order:  # never let two instances of one class touch: keep a one-pixel gap
            if j == i or items[j].mask is None or items[j].mention.class_id != it.mention.class_id:
                continue
            mask &= ~raster.dilate(tmp_inst == j + 1, 1)
        label[mask] = it.mention.class_id
        tmp_inst[mask] = i + 1
        it.mask = mask

    # --- entities in mention order ------------------------------------------------------------------------------
    entities: list[Entity] = []
    for m in mentions:
        if m.index in band_masks:
            vis = (label == m.class_id) & (tmp_inst == 0) & band_masks[m.index]
            inst_id = len(entities) + 1
            inst[vis] = inst_id
            box = mask_box(vis) or _norm_box((0, band_range[m.index][0], 1, band_range[m.index][1]), w, h)
            entities.append(Entity(m.word, m.class_id, inst_id, box, 1, 0, m.index))
        elif m.index in item_of:
            ids = item_of[m.index]
            for k, i in enumerate(ids):
                inst_id = len(entities) + 1
                vis = tmp_inst == i + 1
                inst[vis] = inst_id
                box = mask_box(vis) or _norm_box(items[i].box, w, h)
                entities.append(Entity(m.word, m.class_id, inst_id, box, len(ids), k, m.index))
    return Layout(label, inst, tuple(entities), parsed.text, "rule_based", {"horizon": horizon})


def _norm_box(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        int(np.clip(x0 * w, 0, w - 1)), int(np.clip(y0 * h, 0, h - 1)),
        int(np.clip(np.ceil(x1 * w), 1, w)), int(np.clip(np.ceil(y1 * h), 1, h)),
    )


def _host_of(m: Mention, rel_by_subject: dict[int, list[tuple[str, int]]], mentions: tuple[Mention, ...]) -> int | None:
    for rel, obj in rel_by_subject.get(m.index, []):
        if rel in ("with", "on", "in_front_of", "in", "above") and mentions[obj].class_id in HOSTS:
            return obj
    return None


def _arrange(
    items: list[_Item],
    item_of: dict[int, list[int]],
    objects: list[Mention],
    rel_by_subject: dict[int, list[tuple[str, int]]],
) -> None:
    """Horizontal placement: free groups spread left to right; related groups placed relative to their anchor."""

    def group_width(idx: int) -> float:
        its = [items[i] for i in item_of[idx]]
        return sum(it.w for it in its) + _GAP * (len(its) - 1)

    def set_group(idx: int, center: float) -> None:
        its = [items[i] for i in item_of[idx]]
        total = group_width(idx)
        if total > 0.96:
            scale = 0.96 / total
            for it in its:
                it.w *= scale
                it.h *= scale
            total = group_width(idx)
        center = float(np.clip(center, total / 2 + 0.02, 1 - total / 2 - 0.02)) if total < 0.96 else 0.5
        x = center - total / 2
        for it in its:
            it.cx = x + it.w / 2
            x += it.w + _GAP

    anchors: dict[int, tuple[str, int]] = {}
    for m in objects:
        for rel, obj in rel_by_subject.get(m.index, []):
            if rel in ("in_front_of", "behind", "next_to", "left_of", "right_of", "above", "below", "on") and (
                obj in item_of
            ):
                anchors[m.index] = (rel, obj)
                break
    free = [m.index for m in objects if m.index not in anchors]
    # Free groups form rows by depth (far row: baselines near the horizon), each row spread evenly over the width
    # so objects at one depth never overlap; rows at different depths may (the nearer one is painted over).
    rows: dict[bool, list[int]] = {True: [], False: []}
    for idx in free:
        rows[items[item_of[idx][0]].baseline < 0.72].append(idx)
    for row in rows.values():
        if not row:
            continue
        widths = [group_width(i) for i in row]
        if sum(widths) > 0.9:
            shrink = 0.9 / sum(widths)
            for i in row:
                for k in item_of[i]:
                    items[k].w *= shrink
                    items[k].h *= shrink
            widths = [group_width(i) for i in row]
        space = (1.0 - sum(widths)) / (len(row) + 1)
        x = space
        for i, gw in zip(row, widths, strict=True):
            set_group(i, x + gw / 2)
            x += gw + space
    # Anchored groups, in dependency order (an anchor that is itself anchored goes first).
    pending = [m.index for m in objects if m.index in anchors]
    done = set(free)
    for _ in range(len(pending) + 1):
        for idx in list(pending):
            rel, obj = anchors[idx]
            if obj in item_of and obj not in done and obj in anchors:
                continue
            _place_relative(items, item_of, idx, rel, obj, group_width, set_group)
            pending.remove(idx)
            done.add(idx)
    for idx in pending:  # cycles: leave where they are, but spread
        set_group(idx, 0.5)


def _place_relative(items, item_of, idx, rel, obj, group_width, set_group) -> None:
    gw = group_width(idx)
    anchor = [items[i] for i in item_of[obj]]
    ax0 = min(it.cx - it.w / 2 for it in anchor)
    ax1 = max(it.cx + it.w / 2 for it in anchor)
    acx = (ax0 + ax1) / 2
    its = [items[i] for i in item_of[idx]]
    if rel == "left_of":
        set_group(idx, ax0 - 0.04 - gw / 2)
        if max(it.cx + it.w / 2 for it in its) > ax0:  # no room on the left: push the anchor right instead
            set_group(obj, max(it.cx + it.w / 2 for it in its) + 0.04 + (ax1 - ax0) / 2)
    elif rel == "right_of":
        set_group(idx, ax1 + 0.04 + gw / 2)
        if min(it.cx - it.w / 2 for it in its) < ax1:
            set_group(obj, min(it.cx - it.w / 2 for it in its) - 0.04 - (ax1 - ax0) / 2)
    elif rel == "next_to":
        right_room = 1 - ax1
        set_group(idx, ax1 + 0.04 + gw / 2 if right_room >= ax0 else ax0 - 0.04 - gw / 2)
    elif rel in ("in_front_of", "behind"):
        set_group(idx, acx + (0.08 if rel == "in_front_of" else -0.1) * (ax1 - ax0 + 0.2))
    elif rel in ("above", "on"):
        set_group(idx, acx)
        top = min(it.baseline - it.h for it in anchor)
        for it in its:
            it.baseline = top - (0.04 if rel == "above" else 0.0)
    elif rel == "below":
        set_group(idx, acx)
        bottom = max(it.baseline for it in anchor)
        for it in its:
            it.baseline = min(1.0, bottom + it.h + 0.03)


def _shape_mask(it: _Item, h: int, w: int) -> np.ndarray:
    x0, y0, x1, y1 = it.box
    if it.shape == "ellipse":
        return raster.ellipse(h, w, it.cx, (y0 + y1) / 2, it.w / 2, it.h / 2)
    if it.shape == "tree":
        trunk_w = it.w * 0.18
        trunk = raster.rect(h, w, it.cx - trunk_w / 2, y0 + 0.55 * it.h, it.cx + trunk_w / 2, y1)
        crown = raster.ellipse(h, w, it.cx, y0 + 0.35 * it.h, it.w / 2, 0.35 * it.h)
        return trunk | crown
    if it.shape == "roof":
        # baseline = host top; the roof rises above it
        return raster.polygon(h, w, [(x0, y1), (x1, y1), (it.cx, y1 - it.h)])
    if it.shape == "tent":
        return raster.polygon(h, w, [(x0, y1), (x1, y1), (it.cx, y0)])
    if it.shape == "box":
        return raster.rect(h, w, x0, y0, x1, y1)
    return raster.rounded_rect(h, w, x0, y0, x1, y1, 0.25 * min(it.w, it.h))
