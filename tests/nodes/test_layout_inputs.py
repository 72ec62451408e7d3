"""What the layout nodes do with their inputs (nodes/layout_inputs.py), without ComfyUI: tensor shapes, palette
conversions, entity masks, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kosmos_g_core.layout.labels import CLASS_ID


@pytest.fixture(scope="module")
def li(pack):
    return pack("nodes.layout_inputs")


SHEEP = "Two sheep, one eating grass with a tree in front of a mountain; the sky has a cloud"


def test_prompt_to_layout_outputs(li):
    layout = li.plan_layout(SHEEP, 96, 64)
    image = li.render_image(layout, "coco_panoptic_133")
    assert image.shape == (1, 64, 96, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    masks = li.masks_tensor(layout)
    assert masks.shape == (len(layout.entities), 64, 96)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    # exact colours: every pixel is a palette colour (x255 is an integer)
    assert torch.equal(image * 255, torch.round(image * 255))


def test_palette_image_round_trip_through_tensors(li):
    layout = li.plan_layout(SHEEP, 64, 64)
    for palette in ("coco_panoptic_133", "coco_stuff_171"):
        back = li.layout_from_image(li.render_image(layout, palette), palette, prompt=SHEEP)
        np.testing.assert_array_equal(back.render(palette), layout.render(palette))
    back = li.layout_from_image(li.render_image(layout, "coco_stuff_171"), "auto", prompt=SHEEP)
    np.testing.assert_array_equal(back.label_map, layout.label_map)
    assert [e.label for e in back.entities if e.class_id == CLASS_ID["sheep"]] == ["sheep 1/2", "sheep 2/2"]


def test_entity_masks_by_name_label_and_number(li):
    layout = li.plan_layout(SHEEP, 64, 64)
    both = li.entity_mask(layout, "sheep")
    first = li.entity_mask(layout, "sheep 1/2")
    second = li.entity_mask(layout, "sheep 2/2")
    assert both.shape == (1, 64, 64)
    assert torch.equal(both, torch.clamp(first + second, max=1)) and float((first * second).sum()) == 0
    k = li.pick_entity(layout, "sky")
    assert torch.equal(li.entity_mask(layout, str(k[0] + 1)), li.entity_mask(layout, "sky"))
    assert li.entity_mask(layout, "grass", 128, 96).shape == (1, 96, 128)


def test_clear_messages(li):
    layout = li.plan_layout(SHEEP, 32, 32)
    with pytest.raises(li.LayoutNodeError, match="unknown class name 'sheeep'.*sheep.*Entities in this layout"):
        li.entity_mask(layout, "sheeep")
    with pytest.raises(li.LayoutNodeError, match="has no 'car'.*'sheep 1/2'"):
        li.entity_mask(layout, "car")
    with pytest.raises(li.LayoutNodeError, match="out of range"):
        li.entity_mask(layout, "99")
    with pytest.raises(li.LayoutNodeError, match="no known object or stuff class.*sheep"):
        li.plan_layout("a sheeep on a meadw", 32, 32)
    with pytest.raises(li.LayoutNodeError, match="empty"):
        li.plan_layout("  ", 32, 32)
    photo = torch.rand(1, 16, 16, 3)
    with pytest.raises(li.LayoutNodeError, match="Palette Image to Layout: the image is not a coco_panoptic_133 layout"):
        li.layout_from_image(photo, "coco_panoptic_133")
