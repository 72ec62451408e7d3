"""Rule-based planner: golden layouts for the proposal's two prompts, parsing, determinism, instance separation."""

from __future__ import annotations

import numpy as np
import pytest

from kosmos_g_core.layout.labels import CLASS_ID, IGNORE
from kosmos_g_core.layout.layout import connected_components, layout_from_label_map
from kosmos_g_core.layout.planner import RuleBasedPlanner
from kosmos_g_core.layout.prompt_parser import parse_prompt
from kosmos_g_core.layout.raster import dilate
from kosmos_g_core.layout.vocabulary import resolve_class

SHEEP = "Two sheep, one eating grass with a tree in front of a mountain; the sky has a cloud"
CARS = ("Two cars, one parked on a street with a tree along it, and a window in front of a house and a house with "
        "a roof")


def _by_class(layout, name):
    return [k for k, e in enumerate(layout.entities) if e.class_id == CLASS_ID[name]]


def _rows(mask):
    ys = np.nonzero(mask.any(1))[0]
    return int(ys.min()), int(ys.max())


def test_parse_proposal_prompts():
    p = parse_prompt(SHEEP)
    assert [(m.word, m.count) for m in p.mentions] == [
        ("sheep", 2), ("grass", 1), ("tree", 1), ("mountain", 1), ("sky", 1), ("cloud", 1)]
    rels = {(p.mentions[r.subject].word, r.relation, p.mentions[r.object].word) for r in p.relations}
    assert {("sheep", "on", "grass"), ("tree", "in_front_of", "mountain"), ("cloud", "with", "sky")} <= rels
    p = parse_prompt(CARS)
    assert [(m.word, m.count) for m in p.mentions] == [
        ("cars", 2), ("street", 1), ("tree", 1), ("window", 1), ("house", 1), ("roof", 1)]
    rels = {(p.mentions[r.subject].word, r.relation, p.mentions[r.object].word) for r in p.relations}
    assert {("cars", "on", "street"), ("tree", "along", "street"), ("window", "in_front_of", "house"),
            ("roof", "with", "house")} <= rels


@pytest.mark.parametrize("size", [(64, 64), (256, 192)])
def test_golden_sheep(size):
    w, h = size
    lay = RuleBasedPlanner().plan(SHEEP, width=w, height=h)
    sheep = _by_class(lay, "sheep")
    assert len(sheep) == 2
    m0, m1 = lay.entity_mask(sheep[0]), lay.entity_mask(sheep[1])
    assert m0.sum() > 0 and m1.sum() > 0
    assert not (dilate(m0, 1) & m1).any()  # separate: not even touching
    _, n = connected_components(lay.label_map == CLASS_ID["sheep"])
    assert n == 2  # countable from the semantic map alone
    assert {e.count for k, e in enumerate(lay.entities) if k in sheep} == {2}
    # sheep stand on the grass
    grass = lay.label_map == CLASS_ID["grass"]
    for m in (m0, m1):
        bottom = _rows(m)[1]
        assert grass[min(bottom + 1, h - 1)].any()
    # the tree is in front of the mountain: overlapping it, lower (closer) and drawn over it
    tree = lay.entity_mask(_by_class(lay, "tree")[0])
    mountain = lay.entity_mask(_by_class(lay, "mountain")[0])
    tree_box, mount_box = lay.entities[_by_class(lay, "tree")[0]].box, lay.entities[_by_class(lay, "mountain")[0]].box
    assert tree_box[0] < mount_box[2] and tree_box[2] > mount_box[0]
    assert _rows(tree)[1] > _rows(mountain)[1]
    assert _rows(tree)[0] < _rows(mountain)[1]  # rises into the mountain's rows ...
    row = _rows(tree)[0] + 1
    assert tree[row].any() and (tree[row] & ~mountain[row]).any()  # ... and occludes it there
    # sky on top, above everything else
    sky = lay.entity_mask(_by_class(lay, "sky-other")[0])
    assert sky[0].all()
    assert np.nonzero(sky)[0].mean() < min(np.nonzero(lay.entity_mask(k))[0].mean()
                                           for k in range(len(lay.entities)) if lay.entities[k].name not in ("sky",
                                                                                                                "cloud"))
    # the cloud lies inside the sky region: every neighbour of a cloud pixel is cloud or sky
    cloud = lay.entity_mask(_by_class(lay, "clouds")[0])
    assert cloud.sum() > 0
    assert np.isin(lay.label_map[dilate(cloud, 1)], [CLASS_ID["clouds"], CLASS_ID["sky-other"]]).all()


@pytest.mark.parametrize("size", [(64, 64), (320, 256)])
def test_golden_cars(size):
    w, h = size
    lay = RuleBasedPlanner().plan(CARS, width=w, height=h)
    cars = _by_class(lay, "car")
    assert len(cars) == 2
    c0, c1 = lay.entity_mask(cars[0]), lay.entity_mask(cars[1])
    assert not (dilate(c0, 1) & c1).any()
    street = lay.label_map == CLASS_ID["road"]
    for c in (c0, c1):  # each car stands on the street: the row under it is street
        ys, xs = np.nonzero(c)
        bottom = ys.max()
        under = min(bottom + 1, h - 1)
        assert street[under, xs[ys == bottom]].all() or bottom == h - 1
    house_k = _by_class(lay, "house")
    assert len(house_k) == 1  # "a house ... and a house with a roof" is one house
    house = lay.entity_mask(house_k[0])
    roof = lay.entity_mask(_by_class(lay, "roof")[0])
    window = lay.entity_mask(_by_class(lay, "window-other")[0])
    hb = lay.entities[house_k[0]].box
    # the roof sits above the house body and touches it
    assert _rows(roof)[1] < np.nonzero(house)[0].mean()
    assert (dilate(roof, 1) & house).any()
    # the window is on the house: inside its box and surrounded by house pixels
    wys, wxs = np.nonzero(window)
    assert window.sum() > 0
    assert hb[0] <= wxs.min() and wxs.max() < hb[2] and hb[1] <= wys.min() and wys.max() < hb[3]
    ring = dilate(window, 1) & ~window
    assert (lay.label_map[ring] == CLASS_ID["house"]).all()
    # the tree stands along the street: its foot is at the street's far edge
    tree = lay.entity_mask(_by_class(lay, "tree")[0])
    street_top = _rows(street)[0]
    assert abs(_rows(tree)[1] - street_top) <= max(2, h // 32)


def test_planner_is_deterministic_and_sized():
    a = RuleBasedPlanner().plan(SHEEP, width=96, height=80, seed=1)
    b = RuleBasedPlanner().plan(SHEEP, width=96, height=80, seed=2)
    assert a.label_map.shape == (80, 96) and a.label_map.dtype == np.uint8
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.instance_map, b.instance_map)
    masks = a.masks()
    assert masks.shape == (len(a.entities), 80, 96)
    assert (masks.sum(0) <= 1).all()  # every pixel belongs to at most one entity


def test_counts_relations_and_unknown_words():
    lay = RuleBasedPlanner().plan("three dogs to the left of a cat on the grass", width=128, height=128)
    dogs = _by_class(lay, "dog")
    cat = lay.entities[_by_class(lay, "cat")[0]]
    assert len(dogs) == 3
    assert all(lay.entities[k].box[2] <= cat.box[0] for k in dogs)
    empty = RuleBasedPlanner().plan("an abstract feeling of nostalgia", width=16, height=16)
    assert empty.entities == () and (empty.label_map == IGNORE).all()


def test_resolve_class_names_and_errors():
    assert resolve_class("street") == CLASS_ID["road"]
    assert resolve_class("Sky") == CLASS_ID["sky-other"]
    assert resolve_class("sheep") == CLASS_ID["sheep"]
    assert resolve_class("window-other") == CLASS_ID["window-other"]
    with pytest.raises(KeyError, match="unknown class name 'sheeep'.*sheep"):
        resolve_class("sheeep")


def test_layout_from_label_map_separates_instances():
    m = np.full((6, 9), CLASS_ID["grass"], dtype=np.uint8)
    m[1:3, 0:3] = CLASS_ID["sheep"]
    m[1:3, 5:8] = CLASS_ID["sheep"]
    lay = layout_from_label_map(m)
    names = [(e.label, e.box) for e in lay.entities]
    assert ("sheep 1/2", (0, 1, 3, 3)) in names and ("sheep 2/2", (5, 1, 8, 3)) in names
    assert lay.find("grass") == [next(k for k, e in enumerate(lay.entities) if e.name == "grass")]
