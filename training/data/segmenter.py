"""Text-prompted entity masks with CLIPSeg from a local folder, and the entity crops of the official builder.

Per entity name: CLIPSeg logits -> bilinear upsample to the image -> sigmoid -> threshold (0.3) -> grey dilation
with a window of ~1/100 of the image side -> the largest connected component. The square crop around that
component (shifted to stay inside the image) gives the entity image with background, and the same crop with every
pixel outside the component painted white gives the cut-out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from .local_models import model_dtype, move_inputs, require_model_folder

log = logging.getLogger(__name__)


def clean_mask(mask: np.ndarray, dilation: int) -> np.ndarray | None:
    """(H, W) bool -> dilated, largest connected component only; None when nothing is above the threshold."""
    if not mask.any():
        return None
    if dilation > 1:
        mask = ndimage.grey_dilation(mask.astype(np.uint8), size=(dilation, dilation)) > 0
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == int(np.argmax(sizes)) + 1


def square_box(mask: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the square around the mask's bounding box, centred on it and shifted inside the image
    (side capped at the image's shorter side)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    height, width = mask.shape
    side = min(max(y1 - y0, x1 - x0), height, width)
    top = min(max((y0 + y1) // 2 - side // 2, 0), height - side)
    left = min(max((x0 + x1) // 2 - side // 2, 0), width - side)
    return int(top), int(left), int(side)


def entity_crops(image: Image.Image, mask: np.ndarray, size: int) -> tuple[Image.Image, Image.Image]:
    """(square crop with background, white-background cut-out), both ``size`` x ``size`` RGB."""
    top, left, side = square_box(mask)
    pixels = np.asarray(image.convert("RGB"))[top : top + side, left : left + side].copy()
    crop = Image.fromarray(pixels).resize((size, size), Image.BICUBIC)
    pixels[~mask[top : top + side, left : left + side]] = 255
    cut = Image.fromarray(pixels).resize((size, size), Image.BICUBIC)
    return crop, cut


class ClipSegSegmenter:
    """``segmenter(image, names) -> [mask (H, W) bool | None per name]`` in the image's own resolution."""

    def __init__(self, path: str | Path, device: str = "cpu", threshold: float = 0.3) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        folder = require_model_folder(
            path, "--segmenter", "CLIPSeg (the official builder used CIDAS/clipseg-rd64-refined)"
        )
        self.device = device
        self.dtype = model_dtype(device)
        self.threshold = threshold
        self.processor = CLIPSegProcessor.from_pretrained(folder, local_files_only=True)
        self.model = CLIPSegForImageSegmentation.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        self.model.to(device).eval()
        log.info("segmenter %s on %s", folder, device)

    @torch.no_grad()
    def probabilities(self, image: Image.Image, names: Sequence[str]) -> torch.Tensor:
        """(E, H, W) float32 sigmoid probabilities at the image's resolution."""
        inputs = self.processor(text=list(names), images=[image] * len(names), padding=True, return_tensors="pt")
        logits = self.model(**move_inputs(dict(inputs), self.device, self.dtype)).logits
        logits = logits.reshape(len(names), *logits.shape[-2:]).float()  # one name comes back without its E axis
        # Upsample the logits, then the sigmoid: the official order (kosmos-g/scripts/convert_openimage.py:145-147).
        logits = F.interpolate(logits[:, None], size=(image.height, image.width), mode="bilinear")[:, 0]
        return torch.sigmoid(logits).cpu()

    def __call__(self, image: Image.Image, names: Sequence[str]) -> list[np.ndarray | None]:
        if not names:
            return []
        probabilities = self.probabilities(image, names).numpy()
        dilation = max(1, min(image.size) // 100)
        return [clean_mask(p > self.threshold, dilation) for p in probabilities]
