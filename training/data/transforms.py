"""Image transforms of the loaders: the diffusion target and the full-image entity masks.

The MLLM's images use the core's CLIP preprocessing (:func:`kosmos_g_core.image.preprocess`: short side -> 224
bicubic, centre crop, CLIP mean/std). The diffusion target follows the official ``Resize(R)`` + ``CenterCrop(R)``
+ normalise to [-1, 1]; entity masks go through the same geometry so they stay aligned with the target pixels. Both use
the core's one resize-and-crop (:func:`kosmos_g_core.image.resize_and_crop`), with bilinear resampling. The target's
geometry (its original size and where the crop was cut) goes with it, for SDXL's size conditioning.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from kosmos_g_core.image import crop_offsets, resize_and_crop

# The target transform below, in words: part of a stage-3 cache file's identity (a change here invalidates caches).
TARGET_TRANSFORM = "short side to R bilinear (resize_and_crop), centre crop R x R, x / 127.5 - 1"


def target_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Diffusion target (3, size, size) float32 in [-1, 1] from an RGB image (bilinear, as torchvision Resize)."""
    square = resize_and_crop(image.convert("RGB"), size, resample=Image.BILINEAR)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def target_geometry(image: Image.Image, size: int) -> tuple[int, int, int, int, int, int]:
    """Where `target_tensor(image, size)` came from: (original height, original width, crop top, crop left, size,
    size), the crop's offsets in pixels of the resized image (kosmos_g_core.image.crop_offsets). This is SDXL's size
    conditioning of the target ("time ids", in SDXL's order: original size, crop top-left, target size), as
    diffusers' SDXL training computes it for a resize + centre crop; an SD1.5 stage ignores it."""
    width, height = image.size
    top, left = crop_offsets(width, height, size)
    return height, width, top, left, size, size


def mask_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    """Entity mask (size, size) float32 0/1 in the target's frame (the builder writes L-mode 0/255 masks)."""
    square = resize_and_crop(mask.convert("L"), size, resample=Image.BILINEAR)
    return torch.from_numpy((np.asarray(square) >= 128).astype(np.float32))
