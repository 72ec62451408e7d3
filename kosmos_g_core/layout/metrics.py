"""Layout metrics: dataset-level mIoU, best-of-k mIoU, class presence, counts and left/right/above/below relations.

mIoU follows the mmseg convention: pixels whose ground truth is the ignore index (255) are dropped, a confusion
matrix is accumulated over the whole data set, IoU[c] = TP / (TP + FP + FN), and classes with an empty union (absent
from both prediction and ground truth everywhere) are excluded from the mean. Predicted pixels of 255 on valid ground
truth count as misses (false negatives) of the ground-truth class, never as a class of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .labels import IGNORE, NUM_CLASSES, is_thing
from .layout import Layout, connected_components
from .prompt_parser import ParsedPrompt, parse_prompt


class ConfusionMatrix:
    """(N,N) int64 matrix, rows = ground truth, columns = prediction; update() per image, read the scores at the end."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.missed = np.zeros(num_classes, dtype=np.int64)  # valid GT pixels predicted as ignore / out of range

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        self.matrix += confusion(pred, gt, self.num_classes, self.ignore_index)
        gt = np.asarray(gt).ravel().astype(np.int64)
        pred = np.asarray(pred).ravel().astype(np.int64)
        bad = (gt != self.ignore_index) & (gt < self.num_classes) & ((pred < 0) | (pred >= self.num_classes))
        self.missed += np.bincount(gt[bad], minlength=self.num_classes)[: self.num_classes]
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        self.missed += other.missed
        return self

    def iou(self) -> np.ndarray:
        """(N,) IoU per class, NaN where the class is absent from both prediction and ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt = self.matrix.sum(1) + self.missed
        pred = self.matrix.sum(0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")

    def mean_accuracy(self) -> float:
        gt = self.matrix.sum(1) + self.missed
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(gt > 0, np.diag(self.matrix) / np.maximum(gt, 1), np.nan)
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE) -> np.ndarray:
    """(N,N) confusion of one prediction against its ground truth (same shape), ignoring gt == ignore_index and
    predictions outside [0, N) (those are counted by ConfusionMatrix.missed)."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    gt = np.asarray(gt).ravel().astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in size: {pred.shape} vs {gt.shape}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    return np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def dataset_miou(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray], num_classes: int = NUM_CLASSES) -> float:
    cm = ConfusionMatrix(num_classes)
    for p, g in zip(preds, gts, strict=True):
        cm.update(p, g)
    return cm.miou()


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """mIoU of a single image (classes present in its prediction or ground truth); used to pick the best of k."""
    return ConfusionMatrix(num_classes).update(pred, gt).miou()


def best_of_k(
    samples: Sequence[Sequence[np.ndarray]], gts: Sequence[np.ndarray], num_classes: int = NUM_CLASSES
) -> tuple[float, list[int]]:
    """Dataset mIoU when, for each ground truth, the sample with the best per-image mIoU among its k is kept.

    samples[i] holds the k predictions for gts[i]. Returns (mIoU, chosen index per image).
    """
    cm = ConfusionMatrix(num_classes)
    chosen = []
    for cands, gt in zip(samples, gts, strict=True):
        scores = [image_miou(c, gt, num_classes) for c in cands]
        best = int(np.nanargmax(np.nan_to_num(scores, nan=-1.0)))
        chosen.append(best)
        cm.update(cands[best], gt)
    return cm.miou(), chosen


@dataclass
class PresenceCounts:
    """Micro-averaged class presence: true positives, false positives, false negatives over a data set."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def update(self, expected: Iterable[int], predicted: Iterable[int]) -> PresenceCounts:
        e, p = set(expected), set(predicted)
        self.tp += len(e & p)
        self.fp += len(p - e)
        self.fn += len(e - p)
        return self

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else float("nan")


def classes_in(label_map: np.ndarray, min_pixels: int = 1) -> set[int]:
    ids, counts = np.unique(np.asarray(label_map), return_counts=True)
    return {int(i) for i, c in zip(ids, counts, strict=True) if i != IGNORE and c >= min_pixels}


def instance_counts(layout_or_map: Layout | np.ndarray, min_pixels: int = 1) -> dict[int, int]:
    """Thing class -> number of instances: from a Layout's entities, or 4-connected components of a bare label map."""
    if isinstance(layout_or_map, Layout):
        out: dict[int, int] = {}
        for k, e in enumerate(layout_or_map.entities):
            if is_thing(e.class_id) and layout_or_map.entity_mask(k).sum() >= min_pixels:
                out[e.class_id] = out.get(e.class_id, 0) + 1
        return out
    label_map = np.asarray(layout_or_map)
    out = {}
    for c in classes_in(label_map):
        if is_thing(c):
            comp, n = connected_components(label_map == c)
            sizes = np.bincount(comp.ravel())[1:]
            out[c] = int((sizes >= min_pixels).sum())
    return out


def count_accuracy(expected: Sequence[dict[int, int]], predicted: Sequence[dict[int, int]]) -> float:
    """Share of (prompt, counted class) pairs whose predicted instance count equals the expected count."""
    hits = total = 0
    for e, p in zip(expected, predicted, strict=True):
        for c, n in e.items():
            total += 1
            hits += int(p.get(c, 0) == n)
    return hits / total if total else float("nan")


SPATIAL = ("left_of", "right_of", "above", "below")


def _centroid(label_map: np.ndarray, class_id: int) -> tuple[float, float] | None:
    ys, xs = np.nonzero(np.asarray(label_map) == class_id)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def relation_holds(label_map: np.ndarray, subject: int, relation: str, obj: int) -> bool:
    """left/right/above/below between the centroids of two classes (NSR-1K style); a missing class fails."""
    a, b = _centroid(label_map, subject), _centroid(label_map, obj)
    if a is None or b is None:
        return False
    if relation == "left_of":
        return a[0] < b[0]
    if relation == "right_of":
        return a[0] > b[0]
    if relation == "above":
        return a[1] < b[1]
    if relation == "below":
        return a[1] > b[1]
    raise ValueError(f"relation {relation!r} is not one of {SPATIAL}")


def spatial_relations(parsed: ParsedPrompt) -> list[tuple[int, str, int]]:
    """(subject class, relation, object class) for the prompt's left/right/above/below relations ("on" and
    "under" count as above and below)."""
    alias = {"on": "above", "under": "below"}
    out = []
    for r in parsed.relations:
        rel = alias.get(r.relation, r.relation)
        if rel in SPATIAL:
            out.append((parsed.mentions[r.subject].class_id, rel, parsed.mentions[r.object].class_id))
    return out


@dataclass
class LayoutScores:
    miou: float
    pixel_accuracy: float
    presence_precision: float
    presence_recall: float
    count_accuracy: float
    relation_accuracy: float
    num_images: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class LayoutEvaluator:
    """Accumulates every layout metric over a data set of (caption, predicted layout, ground-truth label map).

    Expected classes, counts and relations come from parsing the caption; for the procedural scenes the captions
    name every class they contain, so this equals the ground truth's own contents.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, min_pixels: int = 1):
        self.cm = ConfusionMatrix(num_classes)
        self.presence = PresenceCounts()
        self.min_pixels = min_pixels
        self._counts_expected: list[dict[int, int]] = []
        self._counts_predicted: list[dict[int, int]] = []
        self._rel_hits = 0
        self._rel_total = 0
        self.n = 0

    def update(self, caption: str, pred: Layout | np.ndarray, gt: np.ndarray) -> None:
        pred_map = pred.label_map if isinstance(pred, Layout) else np.asarray(pred)
        self.cm.update(pred_map, gt)
        parsed = parse_prompt(caption)
        expected = {m.class_id for m in parsed.mentions}
        self.presence.update(expected, classes_in(pred_map, self.min_pixels))
        self._counts_expected.append(parsed.counts())
        self._counts_predicted.append(instance_counts(pred if isinstance(pred, Layout) else pred_map, self.min_pixels))
        for s, rel, o in spatial_relations(parsed):
            self._rel_total += 1
            self._rel_hits += int(relation_holds(pred_map, s, rel, o))
        self.n += 1

    def scores(self) -> LayoutScores:
        return LayoutScores(
            miou=self.cm.miou(),
            pixel_accuracy=self.cm.pixel_accuracy(),
            presence_precision=self.presence.precision,
            presence_recall=self.presence.recall,
            count_accuracy=count_accuracy(self._counts_expected, self._counts_predicted),
            relation_accuracy=self._rel_hits / self._rel_total if self._rel_total else float("nan"),
            num_images=self.n,
        )
