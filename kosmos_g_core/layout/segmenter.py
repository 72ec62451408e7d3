"""A frozen semantic segmenter from a local transformers folder, with its labels tied to COCO-Stuff-171.

Supports `AutoModelForSemanticSegmentation` models (SegFormer, UperNet, BEiT, DPT ...) and Mask2Former / OneFormer-
style universal segmenters (class queries x mask queries -> per-pixel class scores). Nothing is ever downloaded:
the folder must hold config.json and the weights (and preferably preprocessor_config.json for mean/std).

Used for (1) layout faithfulness of generated images (metrics: mIoU between the layout the image was generated from
and the segmentation of the image, in the segmenter's label space), and (2) the segmentation-consistency loss of
training/stages/semantic_supervision.py. Use a different segmenter for evaluation than for training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..local_folders import require_model_folder
from .labels import COCO_STUFF_CLASSES, IGNORE, NUM_CLASSES, display_name
from .metrics import ConfusionMatrix
from .palettes import ADE20K_150, COCO_PANOPTIC_133
from .vocabulary import lookup

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _norm(name: str) -> str:
    return name.split(",")[0].strip().lower().replace("_", " ")


def internal_lut(label_names: list[str]) -> np.ndarray:
    """(256,) uint8: COCO-Stuff-171 id -> segmenter class id (255 where the segmenter has no such class).

    A class matches by its COCO-Stuff name, its display name ('sky'), its COCO-panoptic name ('tree-merged') or its
    ADE20K name ('animal' for sheep), in that order; names are compared lower-case, first alternative only.
    """
    index: dict[str, int] = {}
    for i, n in enumerate(label_names):
        index.setdefault(_norm(n), i)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for c, name in enumerate(COCO_STUFF_CLASSES):
        candidates = [name, name.replace("-", " "), display_name(c)]
        pan = int(COCO_PANOPTIC_133.from_internal[c])
        if pan != IGNORE:
            candidates.append(COCO_PANOPTIC_133.classes[pan])
        ade = int(ADE20K_150.from_internal[c])
        if ade != IGNORE:
            candidates.append(ADE20K_150.classes[ade])
        for cand in candidates:
            if _norm(cand) in index and index[_norm(cand)] < 255:
                lut[c] = index[_norm(cand)]
                break
    return lut


def segmenter_to_internal(label_names: list[str]) -> np.ndarray:
    """(256,) uint8: segmenter class id -> COCO-Stuff-171 id (via names and synonyms; 255 unknown)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    ade_index = {n: i for i, n in enumerate(ADE20K_150.classes)}
    pan_index = {n: i for i, n in enumerate(COCO_PANOPTIC_133.classes)}
    for i, n in enumerate(label_names[:255]):
        key = _norm(n)
        found = lookup(key)
        if found is not None:
            lut[i] = COCO_STUFF_CLASSES.index(found)
        elif key in pan_index:
            lut[i] = COCO_PANOPTIC_133.to_internal[pan_index[key]]
        elif key in ade_index:
            lut[i] = ADE20K_150.to_internal[ade_index[key]]
    return lut


class Segmenter:
    """Frozen segmentation model. `logits` is differentiable w.r.t. the input image (for training losses)."""

    def __init__(self, model: torch.nn.Module, label_names: list[str], mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                 size: int | None = None, universal: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.label_names = list(label_names)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.size = size
        self.universal = universal
        self.from_internal = internal_lut(self.label_names)
        self.to_internal = segmenter_to_internal(self.label_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> Segmenter:
        from transformers import AutoConfig

        path = require_model_folder(path, "segmenter folder", "a SegFormer / UperNet / Mask2Former model")
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        universal = config.model_type in ("mask2former", "oneformer", "maskformer")
        if universal:
            from transformers import AutoModelForUniversalSegmentation as Auto
        else:
            from transformers import AutoModelForSemanticSegmentation as Auto
        model = Auto.from_pretrained(str(path), local_files_only=True, dtype=dtype).to(device)
        id2label = getattr(config, "id2label", None) or {}
        names = [id2label.get(i, id2label.get(str(i), f"class_{i}")) for i in range(len(id2label))]
        mean, std, size = _IMAGENET_MEAN, _IMAGENET_STD, None
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean = tuple(p.get("image_mean", mean))
            std = tuple(p.get("image_std", std))
            s = p.get("size")
            size = (s.get("height") or s.get("shortest_edge")) if isinstance(s, dict) else s
        return cls(model, names, mean, std, size, universal)

    def logits(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) in [0,1] -> class scores (B,C,H,W) (bilinearly resized to the input size)."""
        h, w = images.shape[-2:]
        x = images
        if self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        p = next(self.model.parameters(), None)
        x = ((x - self.mean.to(x)) / self.std.to(x)).to(p.dtype if p is not None else x.dtype)
        out = self.model(pixel_values=x)
        if self.universal:
            cls = out.class_queries_logits.softmax(-1)[..., :-1]  # (B, Q, C), drop "no object"
            masks = out.masks_queries_logits.sigmoid()  # (B, Q, h, w)
            scores = torch.einsum("bqc,bqhw->bchw", cls, masks)
        else:
            scores = out.logits
        return F.interpolate(scores.float(), size=(h, w), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def segment(self, images: Tensor) -> np.ndarray:
        """(B,3,H,W) in [0,1] -> (B,H,W) uint8 segmenter class ids."""
        return self.logits(images).argmax(1).to(torch.uint8).cpu().numpy()


def layout_faithfulness(segmenter: Segmenter, images: Tensor, label_maps: list[np.ndarray]) -> dict[str, float]:
    """mIoU between the layouts images were generated from and the segmentation of the images.

    images (B,3,H,W) in [0,1]; label_maps: internal COCO-Stuff-171 maps (any size; resized nearest to the image).
    Both sides are compared in the segmenter's label space (layout classes it does not know are ignored), with
    the same dataset-level confusion matrix as the layout metrics.
    """
    pred = segmenter.segment(images)
    cm = ConfusionMatrix(max(segmenter.num_classes, 1))
    covered = total = 0
    for p, lab in zip(pred, label_maps, strict=True):
        h, w = p.shape
        ys = np.arange(h) * lab.shape[0] // h
        xs = np.arange(w) * lab.shape[1] // w
        gt = segmenter.from_internal[np.asarray(lab, dtype=np.uint8)[ys][:, xs]]
        covered += int((gt != IGNORE).sum())
        total += int((np.asarray(lab)[ys][:, xs] != IGNORE).sum())
        cm.update(p, gt)
    return {"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy(),
            "layout_coverage": covered / total if total else float("nan"), "num_images": len(label_maps)}


__all__ = ["NUM_CLASSES", "Segmenter", "internal_lut", "layout_faithfulness", "segmenter_to_internal"]
