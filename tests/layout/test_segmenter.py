"""Layout faithfulness through a segmenter: name mapping, hand-computed mIoU, a tiny SegFormer from a local folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kosmos_g_core.layout.labels import CLASS_ID, IGNORE
from kosmos_g_core.layout.segmenter import Segmenter, internal_lut, layout_faithfulness, segmenter_to_internal


class _Fixed(nn.Module):
    """A 'segmenter' that always answers the same label map (as one-hot logits)."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("logits", nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()[None] * 10)

    def forward(self, pixel_values):
        return type("Out", (), {"logits": self.logits.expand(pixel_values.shape[0], -1, -1, -1)})()


def test_name_mapping_between_spaces():
    names = ["sky", "grass", "animal", "tree", "road, route", "windowpane"]  # ADE-style names
    lut = internal_lut(names)
    assert lut[CLASS_ID["sky-other"]] == 0 and lut[CLASS_ID["clouds"]] == 0
    assert lut[CLASS_ID["grass"]] == 1 and lut[CLASS_ID["sheep"]] == 2 and lut[CLASS_ID["bush"]] in (3, IGNORE)
    assert lut[CLASS_ID["road"]] == 4 and lut[CLASS_ID["window-other"]] == 5 and lut[CLASS_ID["car"]] == IGNORE
    back = segmenter_to_internal(names)
    assert back[0] == CLASS_ID["sky-other"] and back[2] == CLASS_ID["dog"] and back[4] == CLASS_ID["road"]


def test_faithfulness_by_hand():
    names = ["sky", "grass", "sheep"]
    seg_map = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 2, 2, 1], [1, 1, 1, 1]])
    seg = Segmenter(_Fixed(seg_map, 3), names)
    layout = np.array([[CLASS_ID["sky-other"]] * 4] * 2 + [[CLASS_ID["grass"], CLASS_ID["sheep"], CLASS_ID["grass"],
                                                             CLASS_ID["grass"]]] + [[CLASS_ID["grass"]] * 4],
                      dtype=np.uint8)
    scores = layout_faithfulness(seg, torch.rand(1, 3, 4, 4), [layout])
    # sky 8/8; grass TP 6, GT 7, pred 6 -> 6/7; sheep TP 1, GT 1, pred 2 -> 1/2
    assert scores["miou"] == pytest.approx((1 + 6 / 7 + 1 / 2) / 3)
    assert scores["layout_coverage"] == 1.0
    # a layout class the segmenter does not know (car) is ignored, and reported through the coverage
    layout2 = layout.copy()
    layout2[0, 0] = CLASS_ID["car"]
    assert layout_faithfulness(seg, torch.rand(1, 3, 4, 4), [layout2])["layout_coverage"] == pytest.approx(15 / 16)


def test_tiny_segformer_from_a_local_folder(tmp_path):
    import transformers
    cfg = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=3, id2label={0: "sky", 1: "grass", 2: "sheep"}, label2id={"sky": 0, "grass": 1, "sheep": 2},
    )
    torch.manual_seed(0)
    transformers.SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "seg")
    seg = Segmenter.from_pretrained(tmp_path / "seg")
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = seg.logits(images)
    assert logits.shape == (2, 3, 32, 32)
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    scores = layout_faithfulness(seg, images.detach(), [np.full((8, 8), CLASS_ID["grass"], dtype=np.uint8)] * 2)
    assert 0.0 <= scores["miou"] <= 1.0 and scores["num_images"] == 2
    with pytest.raises(FileNotFoundError, match="config.json"):
        Segmenter.from_pretrained(tmp_path / "nothing")
