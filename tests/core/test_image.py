"""Image preprocessing: the official Resize(224, BICUBIC) + CenterCrop(224) + CLIP normalisation, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos_g_core.image import CLIP_MEAN, CLIP_STD, preprocess, resize_and_crop, to_pil_rgb

MEAN = np.asarray(CLIP_MEAN).reshape(3, 1, 1)
STD = np.asarray(CLIP_STD).reshape(3, 1, 1)


def normalized(rgb: tuple[int, int, int]) -> torch.Tensor:
    """The expected (3,) output for one pixel colour, computed the official way (float64)."""
    return torch.from_numpy((np.asarray(rgb, dtype=np.float64) / 255.0 - MEAN[:, 0, 0]) / STD[:, 0, 0]).float()


def test_constants_are_clip():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_two_colour_image_crop_and_normalisation():
    # 448x224: the short side is already 224, so no resampling; the centre crop keeps columns 112..335.
    pixels = np.zeros((224, 448, 3), dtype=np.uint8)
    pixels[:, :224] = (255, 0, 0)
    pixels[:, 224:] = (0, 0, 255)
    out = preprocess(Image.fromarray(pixels))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    red, blue = normalized((255, 0, 0)), normalized((0, 0, 255))
    assert torch.equal(out[:, :, :112], red.view(3, 1, 1).expand(3, 224, 112))
    assert torch.equal(out[:, :, 112:], blue.view(3, 1, 1).expand(3, 224, 112))


@pytest.mark.parametrize(("height", "top"), [(225, 0), (226, 1), (227, 2), (229, 2), (231, 4), (233, 4)])
def test_odd_size_crop_offset_rounds_half_to_even(height, top):
    # torchvision: top = int(round((h - 224) / 2.0)) with Python's round (2.5 -> 2, 3.5 -> 4, 0.5 -> 0).
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], 224, axis=1)
    cropped = np.asarray(resize_and_crop(Image.fromarray(rows).convert("RGB")))
    assert cropped.shape == (224, 224, 3)
    assert cropped[0, 0, 0] == top
    assert cropped[-1, 0, 0] == top + 223


def test_resize_truncates_the_long_side_and_matches_pil_bicubic():
    # 301x200: long side int(224 * 301 / 200) = int(337.12) = 337, left offset int(round(113 / 2)) = 56.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (200, 301, 3), dtype=np.uint8))
    expected = image.resize((337, 224), Image.BICUBIC).crop((56, 0, 280, 224))
    assert np.array_equal(np.asarray(resize_and_crop(image)), np.asarray(expected))
    tall = image.transpose(Image.Transpose.TRANSPOSE)
    expected_tall = tall.resize((224, 337), Image.BICUBIC).crop((0, 56, 224, 280))
    assert np.array_equal(np.asarray(resize_and_crop(tall)), np.asarray(expected_tall))


def test_uniform_colour_survives_resampling():
    out = preprocess(Image.new("RGB", (300, 171), (10, 200, 30)))
    assert torch.allclose(out, normalized((10, 200, 30)).view(3, 1, 1).expand(3, 224, 224))


def test_one_pixel_and_extreme_aspect_ratios():
    assert torch.allclose(preprocess(Image.new("RGB", (1, 1), (7, 8, 9))), normalized((7, 8, 9)).view(3, 1, 1))
    strip = np.zeros((10000, 2, 3), dtype=np.uint8)
    strip[4000:6000] = 200
    out = preprocess(strip)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, normalized((200, 200, 200)).view(3, 1, 1).expand(3, 224, 224))
    assert preprocess(Image.new("RGB", (3, 2)), size=28).shape == (3, 28, 28)


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (255, 0, 0, 255)  # opaque red
    rgba[2:] = (255, 0, 0, 0)  # fully transparent: white, whatever its colour
    rgba[3, 3] = (0, 0, 0, 128)  # half-transparent black over white: ~127
    out = np.asarray(to_pil_rgb(Image.fromarray(rgba)))
    assert (out[:2] == (255, 0, 0)).all()
    assert (out[2] == 255).all() and (out[3, :3] == 255).all()
    assert np.abs(out[3, 3].astype(int) - 127).max() <= 1
    la = Image.fromarray(np.stack([np.full((2, 2), 10), np.zeros((2, 2))], -1).astype(np.uint8))
    assert la.mode == "LA" and (np.asarray(to_pil_rgb(la)) == 255).all()
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert (np.asarray(to_pil_rgb(palette)) == 255).all()


def test_greyscale_and_sixteen_bit_modes():
    grey = Image.new("L", (5, 3), 100)
    assert np.array_equal(np.asarray(to_pil_rgb(grey)), np.full((3, 5, 3), 100, np.uint8))
    deep = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    assert np.asarray(to_pil_rgb(deep))[0, :, 0].tolist() == [0, 100, 255]
    assert to_pil_rgb(Image.new("1", (2, 2), 1)).mode == "RGB"
    assert to_pil_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_tensor_and_array_layouts_match_pil():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    reference = preprocess(Image.fromarray(pixels))
    comfy_row = torch.from_numpy(pixels).float() / 255.0  # ComfyUI IMAGE row: (H, W, C) float 0..1
    for variant in (
        comfy_row,
        comfy_row[None],  # (1, H, W, C)
        comfy_row.permute(2, 0, 1),  # (C, H, W) float
        comfy_row.half(),
        torch.from_numpy(pixels),  # (H, W, C) uint8
        torch.from_numpy(pixels).permute(2, 0, 1),  # (C, H, W) uint8
        pixels,
        pixels.astype(np.float64) / 255.0,
    ):
        assert torch.equal(preprocess(variant), reference), type(variant)
    grey = torch.full((6, 6), 0.5)
    assert np.asarray(to_pil_rgb(grey)).tolist() == np.full((6, 6, 3), 128).tolist()


def test_mask_paints_the_background_white():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:] = (0, 128, 0)
    mask = torch.zeros(4, 6)
    mask[:, :3] = 1.0  # subject on the left
    out = np.asarray(to_pil_rgb(image, mask))
    assert (out[:, :3] == (0, 128, 0)).all()
    assert (out[:, 3:] == 255).all()
    # ComfyUI MASK rows (1, H, W), bool and 0..255 masks mean the same; fractional values blend to white.
    for variant in (mask[None], mask.bool(), (mask * 255).to(torch.uint8), mask.numpy()):
        assert np.array_equal(np.asarray(to_pil_rgb(image, variant)), out)
    soft = np.asarray(to_pil_rgb(image, torch.full((4, 6), 0.5)))
    assert soft[0, 0].tolist() == [128, 192, 128]
    # The mask acts before resizing: a fully masked-out image preprocesses to white.
    assert torch.allclose(preprocess(image, mask=torch.zeros(4, 6)), normalized((255, 255, 255)).view(3, 1, 1))


def test_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match=r"mask is 5x6 \(HxW\) but the image is 4x6"):
        to_pil_rgb(np.zeros((4, 6, 3), np.uint8), torch.ones(5, 6))
    with pytest.raises(ValueError, match="unsupported mask shape"):
        to_pil_rgb(np.zeros((4, 6, 3), np.uint8), torch.ones(2, 4, 6))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(0, 3, 3), r"empty: shape \(0, 3, 3\)"),
        (torch.zeros(5, 5, 5), r"channel dimension of size 1\.\.4 in shape \(5, 5, 5\)"),
        (torch.zeros(8, 8, 6), r"shape \(8, 8, 6\)"),
        (torch.zeros(2, 4, 4, 3), r"batch of 2 images"),
        (torch.zeros(3), r"unsupported image shape \(3,\)"),
        (torch.full((4, 4, 3), float("nan")), "NaN"),
        (np.full((4, 4, 3), 300, dtype=np.int32), "outside 0..255"),
    ],
)
def test_bad_images_are_refused_with_the_shape(bad, message):
    with pytest.raises(ValueError, match=message):
        preprocess(bad)


def test_unsupported_type_and_size():
    with pytest.raises(TypeError, match="expected a PIL image, a torch tensor or a numpy array"):
        preprocess("photo.png")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        preprocess(Image.new("RGB", (4, 4)), size=0)
