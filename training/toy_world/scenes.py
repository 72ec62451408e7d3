"""Procedural toy scenes: one subject (shape variant x colour), or two side by side, on a background that the
caption names.

A subject's appearance is drawn from a fixed palette and shape list that have no relation to the caption's place
or class word, so text alone ("a toy on the beach") cannot say which subject to draw: only the reference image can.
The base text-to-image model is taught the attribute words on half of its captions ("a red round toy on the beach"),
the way SD1.5 knows colours and shapes, so the frozen U-Net is able to draw every subject; the KOSMOS-G prompts and
the text-only baseline never use those words.

Two-subject scenes ("a toy next to a block on the beach") put the first-named subject on the left half and the
second on the right, smaller. The second subject has its own class word because the official entity filter drops
names that occur twice in a caption (training/data/entities.py), as it would drop "a dog next to a dog".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Places: the caption names them; the background colour shows them (text fidelity is scored on it).
PLACES: dict[str, tuple[int, int, int]] = {
    "on the beach": (226, 204, 140),
    "in the snow": (238, 240, 246),
    "on the grass": (60, 140, 60),
    "at night": (25, 25, 72),
    "in the sea": (38, 98, 190),
}
# Subject colours (with the word the base model learns for each); chosen far from every background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 30, 34),
    "orange": (250, 140, 0),
    "pink": (232, 62, 200),
    "cyan": (0, 214, 222),
    "brown": (122, 62, 20),
}
SHAPES: dict[str, str] = {"disc": "round", "square": "square", "triangle": "pointed", "cross": "crossed"}
CLASS_WORD = "toy"
SECOND_CLASS_WORD = "block"  # the right-hand subject of a two-subject scene
SUBJECT_HALF = 0.28  # subject half-extent as a fraction of the image side (an 18 px subject in a 32 px scene)
JITTER = 0.06  # maximum centre offset, fraction of the side
# Two-subject scenes: 12 px subjects centred on the two halves (left one spans 0.08-0.46 of the side, right one
# 0.54-0.92), so the scorer reads each half on its own.
PAIR_HALF = 0.19
PAIR_CENTRES = (0.27, 0.73)
PAIR_JITTER = 0.03
# Share of two-subject scenes in every toy training set (the base model's and KOSMOS-G's). SD1.5 can draw two given
# things side by side, so the frozen toy U-Net must too, or no two-entity prompt could succeed whatever KOSMOS-G does.
PAIR_PROB = 0.35
# The two attributes a subject has; a stage-1 caption may name one of them alone (`Scene.caption(attributes=...)`).
ATTRIBUTES = ("colour", "shape")
# Stage 1 may also show the shapes in colours outside the palette (`off_palette_colour`), captioned by shape alone.
# A pretrained CLIP has seen every shape in every colour; the toy ViT, trained from scratch on 15 combinations, saw
# each shape in 3 or 4 colours and learned conjunctions: after stage 1 it named the colour of all 5 held-out subjects
# and the shape of none (`python -m training.toy_world.diagnose`). An off-palette colour is at least this far (RGB)
# from every palette and background colour, so no such picture shows a palette subject, held-out ones included.
OFF_PALETTE_DISTANCE = 90.0


@dataclass(frozen=True)
class Subject:
    shape: str  # key of SHAPES
    colour: str  # key of COLOURS

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}"

    def description(self, attribute: str | None = None) -> str:
        """The attribute words the base model learns: 'red round'; with `attribute` ("colour" or "shape") only that
        one word: 'red', 'round'."""
        words = {"colour": self.colour, "shape": SHAPES[self.shape]}
        if attribute is None:
            return f"{words['colour']} {words['shape']}"
        if attribute not in words:
            raise ValueError(f"attribute {attribute!r}: expected one of {ATTRIBUTES}")
        return words[attribute]


@dataclass(frozen=True)
class Scene:
    subject: Subject
    place: str
    cx: float  # subject centre, fractions of the side
    cy: float

    def caption(self, describe: bool = False, attributes: tuple[str | None] = (None,)) -> str:
        """'a toy on the beach'; described: 'a red round toy on the beach', or with `attributes` = ("colour",) /
        ("shape",) the one word: 'a red toy on the beach' (one entry per subject, as PairScene.caption)."""
        subject = f"{self.subject.description(attributes[0])} {CLASS_WORD}" if describe else CLASS_WORD
        return f"a {subject} {self.place}"

    def entity_spans(self) -> list[tuple[str, int, int]]:
        """(class word, start, end) of each subject's class word in `caption()` (the compositional shards' entities)."""
        start = len("a ")
        return [(CLASS_WORD, start, start + len(CLASS_WORD))]

    def placed(self) -> list[tuple[Subject, float, float, float]]:
        """(subject, cx, cy, half-extent) of each subject, left to right; fractions of the side."""
        return [(self.subject, self.cx, self.cy, SUBJECT_HALF)]

    @property
    def subjects(self) -> tuple[Subject]:
        return (self.subject,)


@dataclass(frozen=True)
class PairScene:
    """Two subjects: `left` is named first in the caption, `right` second."""

    left: Subject
    right: Subject
    place: str
    dx: tuple[float, float] = (0.0, 0.0)  # centre offsets from PAIR_CENTRES, fractions of the side
    dy: tuple[float, float] = (0.0, 0.0)

    def caption(self, describe: bool = False, attributes: tuple[str | None, str | None] = (None, None)) -> str:
        """'a toy next to a block on the beach'; described, each subject with both words or, per `attributes`
        entry, one: 'a red toy next to a pointed block on the beach'."""
        first = f"{self.left.description(attributes[0])} {CLASS_WORD}" if describe else CLASS_WORD
        second = f"{self.right.description(attributes[1])} {SECOND_CLASS_WORD}" if describe else SECOND_CLASS_WORD
        return f"a {first} next to a {second} {self.place}"

    def entity_spans(self) -> list[tuple[str, int, int]]:
        text = self.caption()
        first = len("a ")
        second = text.index(f" {SECOND_CLASS_WORD} ") + 1
        return [(CLASS_WORD, first, first + len(CLASS_WORD)),
                (SECOND_CLASS_WORD, second, second + len(SECOND_CLASS_WORD))]

    def placed(self) -> list[tuple[Subject, float, float, float]]:
        return [(subject, centre + dx, 0.5 + dy, PAIR_HALF)
                for subject, centre, dx, dy in zip((self.left, self.right), PAIR_CENTRES, self.dx, self.dy,
                                                   strict=True)]

    @property
    def subjects(self) -> tuple[Subject, Subject]:
        return self.left, self.right


def all_subjects() -> list[Subject]:
    return [Subject(s, c) for s in SHAPES for c in COLOURS]


def is_held_out(subject: Subject) -> bool:
    """The 5 (colour, shape) combinations that no KOSMOS-G stage ever sees: shape index + colour index = 0 mod 4,
    one per colour, and every shape in at least one. Each colour and each shape still appears in 3 or 4 seen
    subjects, so a held-out subject is new only as a combination: the zero-shot case. (The frozen base model, like
    SD1.5, was trained on every subject: it can draw them all when told the words.)"""
    return (list(SHAPES).index(subject.shape) + list(COLOURS).index(subject.colour)) % len(SHAPES) == 0


def nearest(value, table: dict[str, tuple[int, int, int]]) -> str:
    """The name of the `table` colour (COLOURS or PLACES) nearest to RGB `value` (0..255; Euclidean)."""
    rgb = np.asarray(value, np.float64)
    return min(table, key=lambda name: float(np.linalg.norm(rgb - np.asarray(table[name], np.float64))))


def shows_held_out(shape: str, colour) -> bool:
    """Whether `shape` painted in RGB `colour` would be read as a held-out subject (its colour's nearest palette
    colour makes a held-out combination): the wide picture world of vision_pretrain.py never draws one."""
    return is_held_out(Subject(shape, nearest(colour, COLOURS)))


def seen_subjects() -> list[Subject]:
    return [s for s in all_subjects() if not is_held_out(s)]


def held_out_subjects() -> list[Subject]:
    return [s for s in all_subjects() if is_held_out(s)]


def random_scene(rng: random.Random, subject: Subject | None = None, place: str | None = None,
                 subjects: list[Subject] | None = None) -> Scene:
    """A scene of `subject` (else one drawn from `subjects`, default all) at `place` (else a random one)."""
    subjects = subjects or all_subjects()
    return Scene(
        subject if subject is not None else rng.choice(subjects),
        place if place is not None else rng.choice(list(PLACES)),
        0.5 + rng.uniform(-JITTER, JITTER),
        0.5 + rng.uniform(-JITTER, JITTER),
    )


def random_pair_scene(rng: random.Random, subjects: list[Subject] | None = None) -> PairScene:
    """Two different subjects drawn from `subjects` (default all) at a random place, each jittered."""
    left, right = rng.sample(subjects or all_subjects(), 2)
    jitter = [rng.uniform(-PAIR_JITTER, PAIR_JITTER) for _ in range(4)]
    return PairScene(left, right, rng.choice(list(PLACES)), (jitter[0], jitter[1]), (jitter[2], jitter[3]))


def random_any_scene(rng: random.Random, pair_prob: float, subjects: list[Subject] | None = None) -> Scene | PairScene:
    """A two-subject scene with probability `pair_prob`, else a one-subject scene (at `pair_prob` 0 the draws are
    those of `random_scene` alone, so a one-subject world is the same as before two-subject scenes existed)."""
    if pair_prob > 0 and rng.random() < pair_prob:
        return random_pair_scene(rng, subjects)
    return random_scene(rng, subjects=subjects)


def off_palette_colour(rng: random.Random) -> tuple[int, int, int]:
    """A random RGB colour at least OFF_PALETTE_DISTANCE from every subject and background colour."""
    taken = [np.asarray(c, np.float64) for c in (*COLOURS.values(), *PLACES.values())]
    while True:
        colour = tuple(rng.randrange(256) for _ in range(3))
        if min(float(np.linalg.norm(np.asarray(colour, np.float64) - t)) for t in taken) >= OFF_PALETTE_DISTANCE:
            return colour


def shape_polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]] | None:
    """Polygon vertices in pixels for a shape centred at (cx, cy) with half-extent `half`; None for the disc."""
    if shape == "disc":
        return None
    if shape == "square":
        h = half * 0.85  # equal area-ish with the disc, so size does not give the shape away
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "cross":
        t = half * 0.38
        return [(cx - t, cy - half), (cx + t, cy - half), (cx + t, cy - t), (cx + half, cy - t), (cx + half, cy + t),
                (cx + t, cy + t), (cx + t, cy + half), (cx - t, cy + half), (cx - t, cy + t), (cx - half, cy + t),
                (cx - half, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def draw_subject(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill) -> None:
    poly = shape_polygon(shape, cx, cy, half)
    if poly is None:
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def subject_mask(shape: str, size: int, cx: float, cy: float, half: float = SUBJECT_HALF) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at fractional (cx, cy) with fractional half-extent `half`."""
    img = Image.new("L", (size, size), 0)
    draw_subject(ImageDraw.Draw(img), shape, cx * size, cy * size, half * size, 255)
    return np.asarray(img) > 127


def render(scene: Scene | PairScene, size: int = 32, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """The scene's picture; `fill` paints every subject in that RGB colour instead of its palette colour."""
    img = Image.new("RGB", (size, size), PLACES[scene.place])
    draw = ImageDraw.Draw(img)
    for subject, cx, cy, half in scene.placed():
        draw_subject(draw, subject.shape, cx * size, cy * size, half * size, fill or COLOURS[subject.colour])
    return img


def render_mask(scene: Scene | PairScene, size: int = 32, entity: int = 0) -> Image.Image:
    """Full-image mask of subject `entity` (left to right), L mode 0/255."""
    subject, cx, cy, half = scene.placed()[entity]
    return Image.fromarray(subject_mask(subject.shape, size, cx, cy, half).astype(np.uint8) * 255, "L")


def reference_image(subject: Subject, size: int = 64, cutout: bool = False, place: str = "on the grass",
                    crop: float = 0.75, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """The subject's reference picture: a square crop around it with background, or the white-background cut-out.

    `crop` = side of the crop as a fraction of the scene side (the subject fills 2 * SUBJECT_HALF of the scene);
    `fill` paints the subject's shape in another colour (render)."""
    scene = Scene(subject, place, 0.5, 0.5)
    big = render(scene, size=round(size / crop), fill=fill)
    if cutout:
        mask = render_mask(scene, big.width)
        big = Image.composite(big, Image.new("RGB", big.size, (255, 255, 255)), mask)
    off = (big.width - size) // 2
    return big.crop((off, off, off + size, off + size))


def vocabulary() -> list[str]:
    """Every word a toy caption can contain (for the base model's CLIP tokenizer)."""
    words = {"a", CLASS_WORD, SECOND_CLASS_WORD, "next", "to", *COLOURS, *SHAPES.values()}
    for place in PLACES:
        words.update(place.split())
    return sorted(words)
