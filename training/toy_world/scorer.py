"""The toy world's exact scorer: which place, colour and shape does an image show?

On an image resized to 32 x 32 (bilinear):
1. background = per-channel median of the 2-pixel border ring; the place is the nearest PLACES colour.
2. subject mask = pixels farther than FOREGROUND_DISTANCE (RGB, 0..255) from the background; fewer than
   MIN_SUBJECT_PIXELS pixels means "no subject" (colour and shape both wrong).
3. colour = nearest COLOURS entry to the per-channel median of the mask pixels.
4. shape = the SHAPES template, drawn so its centroid sits on the mask's centroid (best of
   3 x 3 half-pixel shifts), with the highest IoU against the mask.
Subject fidelity = mean of colour-correct and shape-correct; text fidelity = place-correct.

A two-subject image is read the same way, each half of the image on its own (steps 2-4 on the mask pixels of the
left 16 columns, then of the right 16, with the smaller two-subject template size `scenes.PAIR_HALF`): a subject
counts only on its own side.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .scenes import COLOURS, PAIR_HALF, PLACES, SHAPES, SUBJECT_HALF, Subject, nearest, subject_mask

SCORE_SIZE = 32
FOREGROUND_DISTANCE = 60.0
MIN_SUBJECT_PIXELS = 12


@dataclass(frozen=True)
class Reading:
    place: str
    colour: str | None
    shape: str | None
    shape_iou: float
    subject_pixels: int


_SUBPIXEL = [(x / (2 * SCORE_SIZE), y / (2 * SCORE_SIZE)) for x in (-1, 0, 1) for y in (-1, 0, 1)]


@functools.cache
def _centroid_offset(shape: str, half: float) -> tuple[float, float]:
    """Centroid of a shape minus its drawing centre, in fractions of the side (non-zero for the triangle)."""
    size = 256
    ys, xs = np.nonzero(subject_mask(shape, size, 0.5, 0.5, half))
    return (xs.mean() + 0.5) / size - 0.5, (ys.mean() + 0.5) / size - 0.5


def _pixels_and_place(image: Image.Image) -> tuple[np.ndarray, np.ndarray, str]:
    """(pixels (32, 32, 3), foreground mask (32, 32), place read from the border ring)."""
    img = image.convert("RGB")
    if img.size != (SCORE_SIZE, SCORE_SIZE):
        img = img.resize((SCORE_SIZE, SCORE_SIZE), Image.BILINEAR)
    px = np.asarray(img, np.float64)  # (32, 32, 3)
    ring = np.ones((SCORE_SIZE, SCORE_SIZE), bool)
    ring[2:-2, 2:-2] = False
    background = np.median(px[ring], axis=0)
    return px, np.linalg.norm(px - background, axis=-1) > FOREGROUND_DISTANCE, nearest(background, PLACES)


def _read_subject(px: np.ndarray, mask: np.ndarray, place: str, half: float) -> Reading:
    """Colour and shape of the foreground pixels `mask` (steps 2-4), with shape templates of half-extent `half`."""
    count = int(mask.sum())
    if count < MIN_SUBJECT_PIXELS:
        return Reading(place, None, None, 0.0, count)
    colour = nearest(np.median(px[mask], axis=0), COLOURS)
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / SCORE_SIZE, (ys.mean() + 0.5) / SCORE_SIZE
    best, best_iou = None, -1.0
    for shape in SHAPES:
        dx, dy = _centroid_offset(shape, half)
        for ox, oy in _SUBPIXEL:  # rasterisation moves edges by up to a pixel: take the best sub-pixel placement
            template = subject_mask(shape, SCORE_SIZE, cx - dx + ox, cy - dy + oy, half)
            iou = float((template & mask).sum() / max(1, (template | mask).sum()))
            if iou > best_iou:
                best, best_iou = shape, iou
    return Reading(place, colour, best, best_iou, count)


def read_image(image: Image.Image) -> Reading:
    px, mask, place = _pixels_and_place(image)
    return _read_subject(px, mask, place, SUBJECT_HALF)


def read_pair(image: Image.Image) -> tuple[Reading, Reading]:
    """(left half's reading, right half's reading) of a two-subject image."""
    px, mask, place = _pixels_and_place(image)
    middle = SCORE_SIZE // 2
    left, right = mask.copy(), mask.copy()
    left[:, middle:] = False
    right[:, :middle] = False
    return _read_subject(px, left, place, PAIR_HALF), _read_subject(px, right, place, PAIR_HALF)


@dataclass(frozen=True)
class Scores:
    subject_fidelity: float  # mean of colour and shape accuracy
    subject_exact: float  # share of images with colour and shape both right (a colour copied onto a seen shape: 0)
    colour_accuracy: float
    shape_accuracy: float
    text_fidelity: float  # place accuracy
    count: int

    def as_dict(self) -> dict[str, float]:
        return {"subject_fidelity": self.subject_fidelity, "subject_exact": self.subject_exact,
                "colour_accuracy": self.colour_accuracy, "shape_accuracy": self.shape_accuracy,
                "text_fidelity": self.text_fidelity, "images": self.count}


def score_images(images: Sequence[Image.Image], subjects: Sequence[Subject], places: Sequence[str]) -> Scores:
    """Score generated images against the subject each should show and the place its prompt named."""
    if not (len(images) == len(subjects) == len(places)) or not images:
        raise ValueError(f"need equal, non-zero counts: {len(images)} images, {len(subjects)} subjects, "
                         f"{len(places)} places")
    colour = shape = exact = place = 0
    for img, subj, pl in zip(images, subjects, places, strict=True):
        r = read_image(img)
        colour += r.colour == subj.colour
        shape += r.shape == subj.shape
        exact += r.colour == subj.colour and r.shape == subj.shape
        place += r.place == pl
    n = len(images)
    return Scores((colour + shape) / (2 * n), exact / n, colour / n, shape / n, place / n, n)


@dataclass(frozen=True)
class PairScores:
    entity_exact: float  # share of (image, side) with that side's subject right in colour and shape
    both_exact: float  # share of images with both subjects exactly right, each on its side
    entity_fidelity: float  # mean of colour and shape accuracy over both sides
    colour_accuracy: float
    shape_accuracy: float
    text_fidelity: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return {"entity_exact": self.entity_exact, "both_exact": self.both_exact,
                "entity_fidelity": self.entity_fidelity, "colour_accuracy": self.colour_accuracy,
                "shape_accuracy": self.shape_accuracy, "text_fidelity": self.text_fidelity, "images": self.count}


def score_pairs(images: Sequence[Image.Image], pairs: Sequence[tuple[Subject, Subject]],
                places: Sequence[str]) -> PairScores:
    """Score two-subject images against the (left, right) subjects each should show and the place it named."""
    if not (len(images) == len(pairs) == len(places)) or not images:
        raise ValueError(f"need equal, non-zero counts: {len(images)} images, {len(pairs)} pairs, "
                         f"{len(places)} places")
    colour = shape = exact = both = place = 0
    for img, wanted, pl in zip(images, pairs, places, strict=True):
        readings = read_pair(img)
        right = [(r.colour == s.colour, r.shape == s.shape) for r, s in zip(readings, wanted, strict=True)]
        colour += sum(c for c, _ in right)
        shape += sum(s for _, s in right)
        exact += sum(c and s for c, s in right)
        both += all(c and s for c, s in right)
        place += readings[0].place == pl
    n = len(images)
    return PairScores(exact / (2 * n), both / n, (colour + shape) / (4 * n), colour / (2 * n), shape / (2 * n),
                      place / n, n)
