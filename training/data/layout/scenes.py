"""Procedural layout scenes: the built-in data set of the text-to-layout stage (tests, demos, the CPU run).

Outdoor scenes of five kinds (pasture, street, beach, snow, lake) drawn at random (horizon, ridges, ground strips,
animals, cars, houses with roofs and windows, trees, people, boats, clouds, birds), each with a caption generated
from what was drawn: every class, its count in words or digits, and up to two spatial relations that hold in the
drawing. Scene i of seed s is a pure function of (s, i), so held-out sets are just other seeds. The drawing code is
separate from the rule-based planner's on purpose (its own priors and randomness), so comparing the two planners on
these scenes is fair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kosmos_g_core.layout import raster
from kosmos_g_core.layout.labels import CLASS_ID, IGNORE


@dataclass(frozen=True)
class Scene:
    caption: str
    labels: np.ndarray  # (S,S) uint8
    instances: np.ndarray  # (S,S) int32, 0 = none
    counts: dict[int, int]  # thing or object class -> instances drawn


# noun forms the captions use (singular, plural); every one is in the parser's vocabulary.
_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "sheep": (("sheep", "sheep"), ("lamb", "lambs")), "cow": (("cow", "cows"),), "horse": (("horse", "horses"),),
    "dog": (("dog", "dogs"), ("puppy", "puppies")), "person": (("person", "people"), ("man", "men")),
    "car": (("car", "cars"),), "bus": (("bus", "buses"),), "truck": (("truck", "trucks"),),
    "boat": (("boat", "boats"), ("ship", "ships")), "bird": (("bird", "birds"),),
    "umbrella": (("umbrella", "umbrellas"),), "tree": (("tree", "trees"),), "house": (("house", "houses"),),
    "bush": (("bush", "bushes"),), "clouds": (("cloud", "clouds"),), "roof": (("roof", "roofs"),),
    "window-other": (("window", "windows"),),
}
_STUFF_WORDS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "field", "meadow"), "road": ("road", "street"), "sand": ("sand", "beach"),
    "sea": ("sea", "ocean"), "snow": ("snow",), "water-other": ("lake", "water"), "sky-other": ("sky",),
    "mountain": ("mountain",), "hill": ("hill",), "pavement": ("sidewalk", "pavement"),
}
_NUM_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

# class -> (height at the bottom of the frame, pixel aspect w/h, shape); the generator's own priors.
_SHAPES: dict[str, tuple[float, float, str]] = {
    "sheep": (0.2, 1.5, "ellipse"), "cow": (0.24, 1.6, "ellipse"), "horse": (0.3, 1.3, "ellipse"),
    "dog": (0.16, 1.4, "ellipse"), "person": (0.4, 0.4, "ellipse"), "car": (0.2, 2.1, "round"),
    "bus": (0.28, 2.4, "round"), "truck": (0.26, 2.0, "round"), "boat": (0.14, 2.3, "ellipse"),
    "umbrella": (0.2, 1.6, "ellipse"), "tree": (0.55, 0.6, "tree"), "house": (0.42, 1.3, "house"),
    "bush": (0.16, 1.8, "ellipse"),
}
_KINDS = {
    "pasture": ("grass", ("sheep", "cow", "horse", "dog", "person"), ("tree", "bush")),
    "street": ("road", ("car", "person", "bus", "truck", "dog"), ("tree", "house")),
    "beach": ("sand", ("person", "umbrella", "dog"), ()),
    "snow": ("snow", ("person", "dog"), ("tree", "house")),
    "lake": ("grass", ("person", "dog", "horse"), ("tree", "bush")),
}


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def make_scene(seed: int, index: int, size: int = 64) -> Scene:
    """Scene `index` of data set `seed`: label map, instance map and caption, all deterministic."""
    rng = np.random.default_rng([seed, index, 7919])
    s = size
    label = np.full((s, s), IGNORE, dtype=np.uint8)
    inst = np.zeros((s, s), dtype=np.int32)
    kind = _pick(rng, list(_KINDS))
    ground, thing_pool, object_pool = _KINDS[kind]
    has_sky = rng.random() < 0.85
    horizon = float(rng.uniform(0.3, 0.6)) if has_sky else float(rng.uniform(0.0, 0.25))
    stuff: list[str] = []
    facts: list[str] = []

    if has_sky:
        label[raster.rect(s, s, 0, 0, 1, horizon)] = CLASS_ID["sky-other"]
        stuff.append("sky-other")
    far = None
    if has_sky and rng.random() < 0.5:
        far = _pick(rng, ["mountain", "hill"])
        top = float(rng.uniform(0.08, max(0.1, horizon - 0.12)))
        px = float(rng.uniform(0.2, 0.8))
        left, right = float(rng.uniform(horizon - 0.15, horizon)), float(rng.uniform(horizon - 0.15, horizon))
        if far == "hill":
            top = max(top, horizon - 0.2)
        label[raster.polygon(s, s, [(0, horizon + 0.01), (0, left), (px, top), (1, right), (1, horizon + 0.01)])] = (
            CLASS_ID[far]
        )
        stuff.append(far)
    label[raster.rect(s, s, 0, horizon, 1, 1)] = CLASS_ID[ground]
    stuff.append(ground)
    strip = None
    if kind == "beach" and has_sky:
        strip = ("sea", horizon, horizon + float(rng.uniform(0.1, 0.3)) * (1 - horizon))
    elif kind == "lake":
        lo = horizon + float(rng.uniform(0.05, 0.3)) * (1 - horizon)
        strip = ("water-other", lo, lo + float(rng.uniform(0.12, 0.3)) * (1 - horizon))
    elif kind == "street" and rng.random() < 0.5:
        strip = (_pick(rng, ["grass", "pavement"]), 1 - float(rng.uniform(0.1, 0.2)) * (1 - horizon), 1.0)
    if strip is not None:
        label[raster.rect(s, s, 0, strip[1], 1, strip[2])] = CLASS_ID[strip[0]]
        stuff.append(strip[0])

    counts: dict[str, int] = {}
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    items: list[tuple[float, str, np.ndarray]] = []  # (baseline, class, mask) painted far to near
    # clouds and birds in the sky
    sky_things = []
    if has_sky:
        if rng.random() < 0.6:
            sky_things.append(("clouds", int(rng.integers(1, 4))))
        if kind in ("beach", "lake") and rng.random() < 0.4:
            sky_things.append(("bird", int(rng.integers(1, 3))))
    for name, n in sky_things:
        placed = 0
        for _ in range(20 * n):
            if placed == n:
                break
            hh = (0.09 if name == "clouds" else 0.05) * float(rng.uniform(0.8, 1.3))
            ww = hh * (2.8 if name == "clouds" else 1.6)
            cx, cy = float(rng.uniform(ww / 2, 1 - ww / 2)), float(rng.uniform(0.03 + hh / 2, max(0.04 + hh / 2, horizon * 0.6)))
            box = (cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2)
            if any(_overlap(box, b, 0.03) for b in boxes.get(name, [])):
                continue
            mask = raster.ellipse(s, s, cx, cy, ww / 2, hh / 2) & (label == CLASS_ID["sky-other"])
            if mask.sum() < 2:
                continue
            boxes.setdefault(name, []).append(box)
            items.append((-1.0, name, mask))
            placed += 1
        if placed:
            counts[name] = placed

    # things and objects on the ground
    chosen: list[tuple[str, int]] = []
    for name in rng.permutation(list(thing_pool))[: int(rng.integers(1, 3))]:
        chosen.append((str(name), int(rng.integers(1, 4))))
    for name in object_pool:
        if rng.random() < 0.45:
            chosen.append((name, int(rng.integers(1, 3)) if name != "house" else 1))
    if kind in ("beach", "lake") and strip is not None and rng.random() < 0.5:
        chosen.append(("boat", int(rng.integers(1, 3))))
    for name, n in chosen:
        ph, aspect, shape = _SHAPES[name]
        placed = 0
        for _ in range(25 * n):
            if placed == n:
                break
            if name == "boat":
                lo, hi = strip[1] + 0.03, strip[2]
            else:
                lo, hi = horizon + 0.08 * (1 - horizon), 1.0
            if hi - lo < 0.02:
                break
            base = float(rng.uniform(lo, hi))
            persp = 0.45 + 0.75 * (base - horizon) / max(1 - horizon, 1e-3)
            hh = ph * persp * float(rng.uniform(0.8, 1.2))
            ww = hh * aspect
            cx = float(rng.uniform(ww / 4, 1 - ww / 4))
            box = (cx - ww / 2, base - hh, cx + ww / 2, base)
            if any(_overlap(box, b, 0.02) for b in boxes.get(name, [])):
                continue
            boxes.setdefault(name, []).append(box)
            items.append((base, name, _draw(s, shape, box, rng)))
            placed += 1
        if placed:
            counts[name] = counts.get(name, 0) + placed
    # paint far to near; parts of houses (roof, windows) right after their house
    next_id = 1
    owner: dict[int, str] = {}
    for _, name, mask in sorted(items, key=lambda t: t[0]):
        if isinstance(mask, tuple):  # a house: (body, roof, windows)
            body, roof, windows = mask
            parts = [("house", body), ("roof", roof)] + [("window-other", w) for w in windows]
        else:
            parts = [(name, mask)]
        for part_name, m in parts:
            same = [k for k, v in owner.items() if v == part_name]
            if same:  # instances of one class never touch
                m = m & ~raster.dilate(np.isin(inst, same), 1)
            label[m] = CLASS_ID[part_name]
            inst[m] = next_id
            owner[next_id] = part_name
            next_id += 1
    # visible counts after occlusion (an instance hidden completely is not in the caption)
    visible: dict[str, int] = {}
    for k, v in owner.items():
        if (inst == k).sum() >= 2:
            visible[v] = visible.get(v, 0) + 1
    keep = {k for k, v in owner.items() if (inst == k).sum() >= 2}
    for k in owner:
        if k not in keep:
            # an instance occluded down to a sliver is not in the caption: paint it like its surroundings
            sl = inst == k
            if sl.any():
                around = label[raster.dilate(sl, 1) & ~sl]
                label[sl] = np.bincount(around).argmax() if around.size else IGNORE
                inst[sl] = 0
    caption = _caption(rng, stuff, visible, boxes, ground, far, strip, has_sky, facts)
    cls_counts = {CLASS_ID[k]: v for k, v in visible.items()}
    return Scene(caption, label, inst, cls_counts)


def _overlap(a, b, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _draw(s: int, shape: str, box, rng: np.random.Generator):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    if shape == "ellipse":
        return raster.ellipse(s, s, cx, (y0 + y1) / 2, w / 2, h / 2)
    if shape == "round":
        return raster.rounded_rect(s, s, x0, y0 + 0.15 * h, x1, y1, 0.3 * h)
    if shape == "tree":
        crown_h = float(rng.uniform(0.55, 0.75)) * h
        trunk = raster.rect(s, s, cx - 0.1 * w, y0 + crown_h * 0.8, cx + 0.1 * w, y1)
        return trunk | raster.ellipse(s, s, cx, y0 + crown_h / 2, w / 2, crown_h / 2)
    if shape == "house":
        roof_h = float(rng.uniform(0.3, 0.45)) * h
        body = raster.rect(s, s, x0 + 0.05 * w, y0 + roof_h, x1 - 0.05 * w, y1)
        roof = raster.polygon(s, s, [(x0, y0 + roof_h), (x1, y0 + roof_h), (cx + float(rng.uniform(-0.1, 0.1)) * w, y0)])
        n = int(rng.integers(1, 3))
        windows = []
        for k in range(n):
            wx = x0 + w * (k + 1) / (n + 1)
            windows.append(raster.rect(s, s, wx - 0.1 * w, y0 + roof_h + 0.2 * (h - roof_h), wx + 0.1 * w,
                                       y0 + roof_h + 0.5 * (h - roof_h)))
        return body, roof, windows
    raise ValueError(shape)


def _noun(rng, name: str, n: int) -> str:
    singular, plural = _pick(rng, _NOUNS[name])
    if n == 1:
        art = "an" if singular[0] in "aeiou" else "a"
        return f"{_pick(rng, [art, art, 'one'])} {singular}"
    number = str(n) if rng.random() < 0.25 else _NUM_WORDS[n]
    return f"{number} {plural}"


def _caption(rng, stuff, visible, boxes, ground, far, strip, has_sky, facts) -> str:
    parts_of_house = ("roof", "window-other") if "house" in visible else ()
    things = [k for k in visible if k not in ("clouds", "bird") + parts_of_house]
    rng.shuffle(things)
    phrases = [_noun(rng, k, visible[k]) for k in things]
    if "house" in visible:
        i = things.index("house")
        extras = [_pick(rng, ["a roof", "its roof"])] if "roof" in visible else []
        if "window-other" in visible:
            extras.append(_noun(rng, "window-other", visible["window-other"]).replace("one ", "a "))
        if extras:
            phrases[i] += " with " + " and ".join(extras)
    ground_word = _pick(rng, _STUFF_WORDS[ground])
    if phrases:
        body = ", ".join(phrases[:-1]) + (" and " if len(phrases) > 1 else "") + phrases[-1]
        body += f" on the {ground_word}"
    else:
        body = f"a view of the {ground_word}"
    parts = [body]
    # up to two relations that hold in the drawing, between first instances of different classes
    firsts = [(k, boxes[k][0]) for k in things if k in boxes]
    rels = []
    for i in range(len(firsts)):
        for j in range(len(firsts)):
            if i == j:
                continue
            (a, ba), (b, bb) = firsts[i], firsts[j]
            if a not in boxes or b not in boxes:
                continue
            ax, bx = (ba[0] + ba[2]) / 2, (bb[0] + bb[2]) / 2
            if ax < bx - 0.2 and len(boxes[a]) == 1 and len(boxes[b]) == 1:
                rels.append(f"the {_NOUNS[a][0][0]} is to the left of the {_NOUNS[b][0][0]}")
            elif ba[3] > bb[3] + 0.08 and ba[0] < bb[2] and bb[0] < ba[2] and len(boxes[a]) == 1:
                rels.append(f"the {_NOUNS[a][0][0]} is in front of the {_NOUNS[b][0][0]}")
    rng.shuffle(rels)
    parts += rels[: int(rng.integers(0, 3))]
    if strip is not None:
        parts.append(_pick(rng, ["next to the", "beside the", "with the"]) + " " + _pick(rng, _STUFF_WORDS[strip[0]]))
    if far is not None:
        parts.append(_pick(rng, [f"in front of a {far}", f"with a {far} in the background", f"below a {far}"]))
    if has_sky:
        sky_bits = []
        for k in ("clouds", "bird"):
            if k in visible:
                sky_bits.append(_noun(rng, k, visible[k]))
        if sky_bits:
            parts.append("; the sky has " + " and ".join(sky_bits))
        else:
            parts.append(_pick(rng, ["under a blue sky", "under the sky", "with the sky above"]))
    text = parts[0]
    for p in parts[1:]:
        text += p if p.startswith(";") else (", " + p if rng.random() < 0.5 else " " + p)
    return text
