"""Image preprocessing shared by the scorers (plain PIL + torch, no torchvision); the resize and centre crop are the
core's :func:`kosmos_g_core.image.resize_and_crop` (torchvision's rule), bicubic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kosmos_g_core.image import CLIP_MEAN, CLIP_STD, resize_and_crop, to_pil_rgb

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "load_rgb", "to_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB (alpha composited on white, as the KOSMOS-G preprocessing does)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as img:
        rgb = to_pil_rgb(img)
        # closing the file frees an image that to_pil_rgb returned unchanged (already RGB): keep a copy
        return rgb.copy() if rgb is img else rgb


def to_tensor(
    images: Sequence[Image.Image], resize: int, crop: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """PIL images -> normalised float tensor (N, 3, crop, crop): short side -> `resize` (bicubic), centre `crop`."""
    arrays = [np.asarray(resize_and_crop(im.convert("RGB"), resize, crop), dtype=np.float32) / 255.0 for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
