"""Metrics against hand-computed values: ignored pixels, absent classes, dataset-level accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kosmos_g_core.layout.labels import CLASS_ID, IGNORE
from kosmos_g_core.layout.metrics import (
    ConfusionMatrix,
    LayoutEvaluator,
    PresenceCounts,
    best_of_k,
    count_accuracy,
    dataset_miou,
    image_miou,
    instance_counts,
    relation_holds,
)

G1 = np.array([[0, 0, 1], [1, IGNORE, 2]])
P1 = np.array([[0, 1, 1], [1, 0, 3]])
G2 = np.array([[3, 3]])
P2 = np.array([[3, IGNORE]])


def test_single_image_by_hand():
    cm = ConfusionMatrix(num_classes=5).update(P1, G1)
    # valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,3); the pixel with gt 255 (pred 0) is dropped
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2)  # TP 1, GT 2, pred 1
    assert iou[1] == pytest.approx(2 / 3)  # TP 2, GT 2, pred 3
    assert iou[2] == 0.0 and iou[3] == 0.0
    assert math.isnan(iou[4])  # absent from both -> excluded
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3 + 0 + 0) / 4)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_dataset_accumulation_differs_from_mean_of_images():
    # image 2: a valid GT pixel predicted as 255 is a miss of class 3 (FN), not a class of its own
    assert dataset_miou([P1, P2], [G1, G2], num_classes=5) == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 / 3) / 4)
    per_image = (image_miou(P1, G1, 5) + image_miou(P2, G2, 5)) / 2
    assert per_image == pytest.approx(((1 / 2 + 2 / 3) / 4 + 1 / 2) / 2)
    assert per_image != pytest.approx(dataset_miou([P1, P2], [G1, G2], num_classes=5))


def test_all_ignored_image_changes_nothing():
    cm = ConfusionMatrix(5).update(P1, G1)
    before = cm.miou()
    cm.update(np.array([[4, 4]]), np.array([[IGNORE, IGNORE]]))
    assert cm.miou() == before
    assert math.isnan(ConfusionMatrix(5).miou())


def test_best_of_k_picks_the_better_sample():
    gt = np.array([[0, 0, 1, 1]])
    bad, good = np.array([[1, 1, 0, 0]]), np.array([[0, 0, 1, 0]])
    score, chosen = best_of_k([[bad, good]], [gt], num_classes=2)
    assert chosen == [1]
    assert score == pytest.approx((2 / 3 + 1 / 2) / 2)  # class 0: TP2/union3, class 1: TP1/union2


def test_presence_precision_recall():
    pc = PresenceCounts().update({1, 2}, {2, 3}).update({5}, {5})
    assert (pc.tp, pc.fp, pc.fn) == (2, 1, 1)
    assert pc.precision == pytest.approx(2 / 3) and pc.recall == pytest.approx(2 / 3)


def test_counts_and_relations():
    sheep, grass = CLASS_ID["sheep"], CLASS_ID["grass"]
    m = np.full((4, 7), grass)
    m[1:3, 0:2] = sheep
    m[1:3, 4:6] = sheep  # two separate blobs
    assert instance_counts(m) == {sheep: 2}
    touching = m.copy()
    touching[1:3, 2:4] = sheep
    assert instance_counts(touching) == {sheep: 1}
    assert count_accuracy([{sheep: 2}, {sheep: 2}], [instance_counts(m), instance_counts(touching)]) == 0.5
    car = CLASS_ID["car"]
    r = np.full((4, 4), grass)
    r[0, 0] = car
    r[3, 3] = sheep
    assert relation_holds(r, car, "left_of", sheep) and relation_holds(r, car, "above", sheep)
    assert not relation_holds(r, car, "right_of", sheep) and not relation_holds(r, car, "below", sheep)
    assert not relation_holds(r, CLASS_ID["dog"], "left_of", sheep)  # a missing class fails


def test_layout_evaluator_on_a_small_case():
    sheep, grass, dog = CLASS_ID["sheep"], CLASS_ID["grass"], CLASS_ID["dog"]
    gt = np.full((4, 7), grass)
    gt[1:3, 0:2] = sheep
    gt[1:3, 4:6] = sheep
    pred = gt.copy()
    pred[1:3, 4:6] = dog  # one sheep became a dog
    ev = LayoutEvaluator()
    ev.update("two sheep to the left of a dog on grass", pred, gt)
    s = ev.scores()
    # grass: TP 20 / union 20; sheep: TP 4 / union 8; dog: TP 0 / union 4
    assert s.miou == pytest.approx((1 + 0.5 + 0) / 3)
    assert s.presence_precision == 1.0 and s.presence_recall == 1.0
    assert s.count_accuracy == 0.5  # sheep: 1 instead of 2 (wrong); dog: 1 (right)
    # "sheep left of dog" holds; "dog on grass" (= above) fails: the grass centroid is at the dog's height
    assert s.relation_accuracy == 0.5
