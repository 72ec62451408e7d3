"""One resize-and-crop for inference, training and evaluation (issue 12, point 8): every caller gives the crop the
official rule gives, checked against hand-computed sizes and offsets on non-square images.

The rule (torchvision Resize(int) + CenterCrop): short side -> size, long side int(size * long / short), offsets
int(round((h - crop) / 2.0)). The three sizes below are where the project's earlier copies disagreed with it: a
rounded long side (107 instead of 106) and a floored offset (17 instead of 18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos_g_core.image import MAX_ASPECT_RATIO, crop_offsets, resize_and_crop
from training.data.transforms import mask_tensor, target_geometry, target_tensor
from training.evaluation.images import IMAGENET_MEAN, IMAGENET_STD, to_tensor

# (width, height, size, crop) -> (resized width, resized height, left, top), computed by hand:
CASES = [
    # 64 * 112 / 67 = 106.99 -> 106 (rounding gave 107); left int(round(42 / 2)) = 21
    ((112, 67, 64, 64), (106, 64, 21, 0)),
    # 64 * 104 / 67 = 99.34 -> 99; left round(17.5) = 18 (half to even; flooring gave 17)
    ((104, 67, 64, 64), (99, 64, 18, 0)),
    # tall: 64 * 100 / 45 = 142.2 -> 142; top round(39.0) = 39
    ((45, 100, 64, 64), (64, 142, 0, 39)),
    # DINO's Resize(256) + CenterCrop(224) on 300x200: 256 * 300 / 200 = 384; left round(80.0) = 80, top round(16.0)
    ((300, 200, 256, 224), (384, 256, 80, 16)),
    # already at size: no resampling; left round(7.5) = 8
    ((79, 64, 64, 64), (79, 64, 8, 0)),
]


def _image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(width * 1000 + height).integers(0, 256, (height, width, 3), np.uint8))


def _expected(image: Image.Image, resized: tuple[int, int, int, int], crop: int, resample: int) -> np.ndarray:
    new_w, new_h, left, top = resized
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample)
    return np.asarray(image.crop((left, top, left + crop, top + crop)))


@pytest.mark.parametrize(("shape", "resized"), CASES)
def test_core_resize_and_crop(shape, resized):
    width, height, size, crop = shape
    image = _image(width, height)
    for resample in (Image.BICUBIC, Image.BILINEAR):
        out = resize_and_crop(image, size, crop, resample=resample)
        assert out.size == (crop, crop)
        assert np.array_equal(np.asarray(out), _expected(image, resized, crop, resample))


@pytest.mark.parametrize(("shape", "resized"), [c for c in CASES if c[0][2] == c[0][3]])
def test_training_targets_and_masks_use_the_same_crop(shape, resized):
    width, height, size, _ = shape
    image = _image(width, height)
    expected = _expected(image, resized, size, Image.BILINEAR).astype(np.float32) / 127.5 - 1.0
    assert torch.equal(target_tensor(image, size), torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    mask = image.convert("L")
    expected_mask = _expected(mask, resized, size, Image.BILINEAR) >= 128
    assert torch.equal(mask_tensor(mask, size), torch.from_numpy(expected_mask.astype(np.float32)))


@pytest.mark.parametrize(("shape", "resized"), CASES)
def test_evaluation_scorers_use_the_same_crop(shape, resized):
    width, height, size, crop = shape
    image = _image(width, height)
    pixels = _expected(image, resized, crop, Image.BICUBIC).astype(np.float32) / 255.0
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    expected = torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())
    assert torch.allclose(to_tensor([image], size, crop, IMAGENET_MEAN, IMAGENET_STD)[0], expected, atol=1e-6)


@pytest.mark.parametrize(("shape", "resized"), CASES)
def test_crop_offsets_are_where_the_crop_is_cut(shape, resized):
    """SDXL's size conditioning of a training target reports the crop resize_and_crop really made: its top-left
    corner in pixels of the resized image, and the original height and width (target_geometry, in SDXL's order)."""
    width, height, size, crop = shape
    new_w, new_h, left, top = resized
    assert crop_offsets(width, height, size, crop) == (top, left)
    if size == crop:
        assert target_geometry(_image(width, height), size) == (height, width, top, left, size, size)


def test_crop_offsets_of_an_image_past_the_aspect_limit_are_within_the_shortened_image():
    width, height = 3 * MAX_ASPECT_RATIO * 2, 2  # first centre-cropped to 128 x 2, then resized to 256 x 4
    assert crop_offsets(width, height, 4) == (0, 126)  # round((256 - 4) / 2)


def test_crop_larger_than_size_is_refused():
    with pytest.raises(ValueError, match="crop"):
        resize_and_crop(_image(10, 10), 8, 9)
