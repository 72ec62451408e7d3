"""Image transforms of the loaders: the diffusion target and the full-image entity masks.

The MLLM's images use the core's CLIP preprocessing (:func:`kosmos_g_core.image.preprocess`: short side -> 224
bicubic, centre crop, CLIP mean/std). The diffusion target follows the official ``Resize(R)`` + ``CenterCrop(R)``
+ normalise to [-1, 1]; entity masks go through the same geometry so they stay aligned with the target pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_center_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Short side -> ``size`` then the central ``size`` x ``size`` square (torchvision's rounding)."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=resample)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def target_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Diffusion target (3, size, size) float32 in [-1, 1] from an RGB image (bilinear, as torchvision Resize)."""
    square = resize_center_crop(image.convert("RGB"), size, Image.BILINEAR)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def mask_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    """Entity mask (size, size) float32 0/1 in the target's frame (the builder writes L-mode 0/255 masks)."""
    square = resize_center_crop(mask.convert("L"), size, Image.BILINEAR)
    return torch.from_numpy((np.asarray(square) >= 128).astype(np.float32))
