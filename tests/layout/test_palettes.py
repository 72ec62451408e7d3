"""Palettes: class lists, exact rendering, parsing back by nearest colour, shared colours, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from kosmos_g_core.layout.labels import CLASS_ID, COCO_STUFF_CLASSES, IGNORE, NUM_CLASSES, raw_to_contiguous
from kosmos_g_core.layout.palettes import (
    ADE20K_150,
    COCO_PANOPTIC_133,
    COCO_STUFF_171,
    PALETTES,
    PaletteError,
    detect_palette,
    get_palette,
    parse_ids,
    parse_layout_image,
)


def test_label_space_ids_and_names():
    assert len(COCO_STUFF_CLASSES) == NUM_CLASSES == 171
    assert COCO_STUFF_CLASSES[0] == "person" and COCO_STUFF_CLASSES[79] == "toothbrush"
    assert COCO_STUFF_CLASSES[80] == "banner" and COCO_STUFF_CLASSES[170] == "wood"
    for name in ("sheep", "grass", "tree", "mountain", "sky-other", "clouds", "car", "road", "window-other", "house",
                 "roof"):
        assert name in CLASS_ID
    # stuffthingmaps store COCO id - 1: sheep (COCO 20) -> 19, clouds (COCO 106) -> 105, unlabelled stays 255
    raw = np.array([[19, 105, 255, 11]], dtype=np.uint8)  # 11 = COCO id 12, an unused id
    assert raw_to_contiguous(raw).tolist() == [[CLASS_ID["sheep"], CLASS_ID["clouds"], IGNORE, IGNORE]]


def test_palette_sizes_and_reference_colours():
    assert COCO_PANOPTIC_133.num_classes == 133 and ADE20K_150.num_classes == 150 and COCO_STUFF_171.num_classes == 171
    pan = dict(zip(COCO_PANOPTIC_133.classes, map(tuple, COCO_PANOPTIC_133.colors.tolist()), strict=True))
    assert pan["sheep"] == (0, 82, 0) and pan["car"] == (0, 0, 142) and pan["road"] == (128, 64, 128)
    assert pan["tree-merged"] == (107, 142, 35) and pan["sky-other-merged"] == (70, 130, 180)
    assert pan["roof"] == (92, 82, 55) and pan["house"] == (70, 70, 70) and pan["window-other"] == (255, 73, 97)
    assert COCO_PANOPTIC_133.classes.index("sheep") == 18 and COCO_PANOPTIC_133.classes.index("tree-merged") == 116
    ade = ADE20K_150
    assert tuple(ade.colors[6]) == tuple(ade.colors[48]) == (140, 140, 140)  # road == skyscraper
    assert len({tuple(c) for c in COCO_STUFF_171.colors.tolist()}) == 171


def test_merge_tables():
    pan = COCO_PANOPTIC_133
    for member in ("tree", "bush", "branch", "leaves"):
        assert pan.classes[pan.from_internal[CLASS_ID[member]]] == "tree-merged"
    assert pan.classes[pan.from_internal[CLASS_ID["clouds"]]] == "sky-other-merged"
    assert pan.from_internal[CLASS_ID["metal"]] == IGNORE  # removed from COCO panoptic
    assert pan.to_internal[pan.classes.index("tree-merged")] == CLASS_ID["tree"]
    ade = ADE20K_150
    assert ade.classes[ade.from_internal[CLASS_ID["sheep"]]] == "animal"
    assert ade.classes[ade.from_internal[CLASS_ID["road"]]] == "road"
    assert ade.classes[ade.from_internal[CLASS_ID["skyscraper"]]] == "building"  # never the colour road shares


@pytest.mark.parametrize("name", list(PALETTES))
def test_render_parse_round_trip_exact(name):
    pal = get_palette(name)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, pal.num_classes, size=(40, 40)).astype(np.uint8)
    ids[:3] = IGNORE
    if name == "ade20k_150":  # skyscraper's colour is road's: it can only parse as road
        ids[ids == 48] = 6
    image = pal.render_ids(ids)
    assert image.dtype == np.uint8 and image.shape == (40, 40, 3)
    back, used = parse_ids(image, name)
    assert used is pal
    np.testing.assert_array_equal(back, ids)
    # float IMAGE in [0,1] (ComfyUI) parses identically
    back_f, _ = parse_ids(image.astype(np.float32) / 255.0, name)
    np.testing.assert_array_equal(back_f, ids)


@pytest.mark.parametrize("name", list(PALETTES))
def test_internal_round_trip_is_stable(name):
    pal = get_palette(name)
    labels = np.arange(171, dtype=np.uint8).reshape(9, 19)
    once = pal.render(labels)
    internal, _ = parse_layout_image(once, name)
    np.testing.assert_array_equal(pal.render(internal), once)  # render -> parse -> render is exact
    if name == "coco_stuff_171":
        np.testing.assert_array_equal(internal, labels)


def test_shared_colour_potted_plant_and_van():
    plant = COCO_PANOPTIC_133.classes.index("potted plant")
    van = ADE20K_150.classes.index("van")
    assert tuple(COCO_PANOPTIC_133.colors[plant]) == tuple(ADE20K_150.colors[van]) == (163, 255, 0)
    pix = np.array([[[163, 255, 0]]], dtype=np.uint8)
    assert parse_ids(pix, "coco_panoptic_133")[0][0, 0] == plant
    assert parse_ids(pix, "ade20k_150")[0][0, 0] == van
    # with palette="auto" the rest of the image decides
    coco_img = COCO_PANOPTIC_133.render_ids(np.array([[plant, 2, 18, 100]], dtype=np.uint8))
    ade_img = ADE20K_150.render_ids(np.array([[van, 2, 4, 9]], dtype=np.uint8))
    assert detect_palette(coco_img) is COCO_PANOPTIC_133 and detect_palette(ade_img) is ADE20K_150
    assert parse_ids(coco_img)[0][0, 0] == plant and parse_ids(ade_img)[0][0, 0] == van


def test_nearest_colour_absorbs_small_noise():
    ids = np.array([[2, 18], [100, IGNORE]], dtype=np.uint8)
    img = COCO_PANOPTIC_133.render_ids(ids).astype(np.int16)
    img[0, 0] += 3
    img[1, 1] += 2
    back, _ = parse_ids(np.clip(img, 0, 255).astype(np.uint8), "coco_panoptic_133", max_off_palette=0.0)
    np.testing.assert_array_equal(back, ids)


def test_wrong_palette_image_is_a_clear_error():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    with pytest.raises(PaletteError, match="not a coco_panoptic_133 layout.*PNG"):
        parse_ids(photo, "coco_panoptic_133")
    ade_map = ADE20K_150.render_ids(rng.integers(0, 150, size=(16, 16)).astype(np.uint8))
    with pytest.raises(PaletteError, match="look like a ade20k_150 layout"):
        parse_ids(ade_map, "coco_panoptic_133")
    with pytest.raises(PaletteError, match="unknown palette 'cityscapes'"):
        get_palette("cityscapes")
    with pytest.raises(PaletteError, match=r"\(H,W,3\)"):
        parse_ids(np.zeros((4, 4)), "ade20k_150")
