"""Image preprocessing for the KOSMOS-G vision tower (CLIP ViT-L/14 at 224 px).

The official transform (``app_model.py`` and every data loader) runs on PIL images:
``Resize(224, BICUBIC)`` (short side to 224, long side ``int(224 * long / short)``), ``CenterCrop(224)`` (offsets
``int(round((h - 224) / 2.0))``, Python's round-half-to-even), then ``/ 255``, minus the CLIP mean, over the CLIP std,
in float64. This module reproduces it with PIL alone (no torchvision), and accepts the inputs a ComfyUI graph or a
script has at hand: PIL images of any mode, torch tensors and numpy arrays, channels-last (ComfyUI ``IMAGE`` rows,
float 0..1) or channels-first, uint8 or float.

Transparency is composited over white, and an optional subject mask paints the background white: the training data's
entity images are white-background cut-outs, so this is the form the model saw.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Past this aspect ratio the exact resize would build a huge intermediate image (a 1x10000 strip resized to a short
# side of 224 is 2.2 million pixels long); the source is first centre-cropped to this ratio, which leaves the final
# centre crop's neighbourhood untouched.
MAX_ASPECT_RATIO = 64

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def to_pil_rgb(image: Any, mask: Any = None) -> Image.Image:
    """Any accepted image as an 8-bit RGB PIL image, transparency over white, background painted white by ``mask``.

    ``image``: a PIL image (any mode), or a torch tensor / numpy array shaped (H, W), (H, W, C), (C, H, W) or with a
    leading batch dimension of 1, C in 1..4 (grey, grey+alpha, RGB, RGBA); uint8 0..255 or float 0..1. When both
    (H, W, C) and (C, H, W) fit, channels-last (ComfyUI's ``IMAGE`` layout) wins.
    ``mask``: (H, W) (or (1, H, W), (H, W, 1), or a PIL image), 1 = subject, 0 = background; float 0..1, bool or
    uint8 0/1 or 0..255. Fractional values blend towards white. Its size must equal the image's.
    """
    pil = _as_pil(image)
    rgb = _flatten_to_rgb(pil)
    if mask is None:
        return rgb
    width, height = rgb.size
    weights = _mask_weights(mask, (height, width))
    if weights.shape != (height, width):
        raise ValueError(
            f"the mask is {weights.shape[0]}x{weights.shape[1]} (HxW) but the image is {height}x{width}; "
            "expected a mask of the same size as its image"
        )
    pixels = np.asarray(rgb, dtype=np.float64)
    painted = pixels * weights[:, :, None] + 255.0 * (1.0 - weights[:, :, None])
    return Image.fromarray(np.rint(painted).astype(np.uint8))


def resize_and_crop(image: Image.Image, size: int = 224, crop: int | None = None,
                    resample: int = Image.BICUBIC) -> Image.Image:
    """torchvision ``Resize(size, resample)`` then ``CenterCrop(crop)`` on a PIL image, bit for bit.

    The project's one resize-and-crop: the vision tower's input (224, bicubic), the trainer's diffusion targets and
    entity masks (bilinear) and the evaluation's scorers and real FID images (DINO: 256 then 224) all call it, so
    training, inference and evaluation see the same crop of the same image. ``crop`` defaults to ``size``.

    The rule (torchvision ``transforms/functional.py``: ``_compute_resized_output_size`` and ``center_crop``): the
    short side becomes ``size`` and the long side ``int(size * long / short)`` (truncated, not rounded; an image
    whose short side already is ``size`` is not resampled); the crop's offsets are ``int(round((h - crop) / 2.0))``
    and ``int(round((w - crop) / 2.0))`` (Python's round, half to even). Example: 112x67 (WxH) at size 64 is resized
    to 106x64 (64 * 112 / 67 = 106.99) and cropped from left ``round(21.0)`` = 21.
    """
    image = _limit_aspect_ratio(image)
    new_width, new_height, top, left, crop = _resize_and_crop_plan(*image.size, size, crop)
    if (new_width, new_height) != image.size:
        image = image.resize((new_width, new_height), resample)
    return image.crop((left, top, left + crop, top + crop))


def crop_offsets(width: int, height: int, size: int, crop: int | None = None) -> tuple[int, int]:
    """(top, left): where `resize_and_crop(image, size, crop)` of a `width` x `height` image cuts its crop, in pixels
    of the resized image (short side `size`). SDXL is conditioned on this ("crop_coords_top_left", as diffusers'
    SDXL training computes it after its resize). An image past MAX_ASPECT_RATIO is first centre-cropped to it, and
    the offsets are then those within that shortened image."""
    _, _, top, left, _ = _resize_and_crop_plan(*_limited_size(width, height), size, crop)
    return top, left


def _resize_and_crop_plan(width: int, height: int, size: int, crop: int | None) -> tuple[int, int, int, int, int]:
    """(new width, new height, top, left, crop) of resize_and_crop's rule for an image of that size."""
    crop = size if crop is None else crop
    for name, value in (("size", size), ("crop", crop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if crop > size:
        raise ValueError(f"crop ({crop}) must not exceed size ({size}): the centre crop would need padding")
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    top = int(round((new_height - crop) / 2.0))
    left = int(round((new_width - crop) / 2.0))
    return new_width, new_height, top, left, crop


def normalize(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 from an RGB PIL image: ``/255``, minus CLIP mean, over CLIP std (in float64, as official)."""
    pixels = np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0
    pixels = (pixels - np.asarray(CLIP_MEAN).reshape(3, 1, 1)) / np.asarray(CLIP_STD).reshape(3, 1, 1)
    return torch.from_numpy(pixels.astype(np.float32))


def preprocess(image: Any, size: int = 224, mask: Any = None) -> torch.Tensor:
    """The official CLIP transform of one image: a float32 tensor (3, size, size).

    Accepts everything :func:`to_pil_rgb` accepts; ``mask`` paints the background white before resizing.
    """
    return normalize(resize_and_crop(to_pil_rgb(image, mask), size))


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
        return image
    if isinstance(image, torch.Tensor):
        array = _tensor_to_numpy(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(
            f"unsupported image type {type(image).__name__}; expected a PIL image, a torch tensor or a numpy array"
        )
    return _array_to_pil(array)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()


def _array_to_pil(array: np.ndarray) -> Image.Image:
    shape = tuple(array.shape)
    expected = "(H, W), (H, W, C) or (C, H, W) with C in 1..4 (optionally a leading batch of 1)"
    if array.size == 0:
        raise ValueError(f"the image is empty: shape {shape}; expected {expected}")
    if array.ndim == 4:
        if shape[0] != 1:
            raise ValueError(f"got a batch of {shape[0]} images, shape {shape}; expected one image, {expected}")
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        channels_last = shape[-1] <= 4
        channels_first = array.shape[0] <= 4
        if channels_first and not channels_last:
            array = array.transpose(1, 2, 0)
        elif not channels_last:
            raise ValueError(f"cannot find a channel dimension of size 1..4 in shape {shape}; expected {expected}")
    else:
        raise ValueError(f"unsupported image shape {shape}; expected {expected}")
    pixels = _to_uint8(array, shape)
    # Pillow infers L / LA / RGB / RGBA from the shape of a uint8 array.
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)


def _to_uint8(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"integer image of shape {shape} has values outside 0..255; expected uint8-range values "
                "(or a float image in 0..1)"
            )
        return np.ascontiguousarray(array.astype(np.uint8))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"float image of shape {shape} contains NaN or infinite values")
        # Round, not truncate: a ComfyUI image made from uint8 (v / 255) gets its exact byte values back.
        return np.ascontiguousarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))
    raise ValueError(f"unsupported image dtype {array.dtype} (shape {shape}); expected uint8 or float")


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel; alpha composited over white; 16-bit greyscale scaled down, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # PIL clips 16-bit values when converting to 8 bits; scale them instead. Mode "I" holds 16-bit PNGs on
        # some Pillow versions, and 8-bit data on others: scale only when the values need it.
        if mode in _SIXTEEN_BIT_MODES or (mode == "I" and values.max() > 255):
            values = values / 257.0
        grey = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def _mask_weights(mask: Any, image_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) float64 in 0..1, 1 = keep the pixel. ``image_hw`` only settles (1, H, W) versus (H, W, 1)."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    if isinstance(mask, torch.Tensor):
        array = _tensor_to_numpy(mask)
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise TypeError(f"unsupported mask type {type(mask).__name__}; expected a torch tensor, numpy array or PIL")
    shape = tuple(array.shape)
    if array.ndim == 3:
        candidates = []
        if shape[0] == 1:
            candidates.append(array[0])
        if shape[-1] == 1:
            candidates.append(array[:, :, 0])
        matching = [c for c in candidates if c.shape == image_hw]
        array = (matching or candidates or [array])[0]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"unsupported mask shape {shape}; expected (H, W), (1, H, W) or (H, W, 1)")
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"the mask (shape {shape}) contains NaN or infinite values")
    if np.issubdtype(array.dtype, np.integer) and values.max() > 1:
        values = values / 255.0
    return np.clip(values, 0.0, 1.0)


def _limited_size(width: int, height: int) -> tuple[int, int]:
    """The size `_limit_aspect_ratio` leaves an image of that size."""
    short, long = min(width, height), max(width, height)
    if long <= MAX_ASPECT_RATIO * short:
        return width, height
    keep = math.ceil(MAX_ASPECT_RATIO * short)
    return (keep, height) if width > height else (width, keep)


def _limit_aspect_ratio(image: Image.Image) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= MAX_ASPECT_RATIO * short:
        return image
    keep = math.ceil(MAX_ASPECT_RATIO * short)
    log.info(
        "image of %dx%d pixels is centre-cropped to a %d:1 aspect ratio before resizing",
        width,
        height,
        MAX_ASPECT_RATIO,
    )
    offset = (long - keep) // 2
    if width > height:
        return image.crop((offset, 0, offset + keep, height))
    return image.crop((0, offset, width, offset + keep))
