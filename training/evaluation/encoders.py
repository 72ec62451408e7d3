"""Feature encoders for the DreamBench scores, loaded from local folders only.

* DINO ViT-S/16: a transformers `ViTModel` folder (e.g. a local copy of `facebook/dino-vits16`); feature = the CLS
  token of the last hidden state (the torch.hub DINO model KOSMOS-G used returns the same CLS token after its final
  norm). Preprocessing as KOSMOS-G's `dino_score.py`: resize 256 bicubic, centre crop 224, ImageNet mean/std.
* CLIP ViT-B/32: a transformers `CLIPModel` folder with its tokenizer (a local copy of
  `openai/clip-vit-base-patch32`); image/text features are the projected embeddings, L2-normalised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from kosmos_g_core.local_folders import require_model_folder

from .images import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, to_tensor

log = logging.getLogger(__name__)


def _features(output: object) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features; older versions return the tensor itself.
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected feature output {type(output).__name__}")
    return pooled


class DinoEncoder:
    """DINO ViT CLS features, L2-normalised, shape (N, D)."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from transformers import ViTModel

        path = require_model_folder(model_dir, "DINO ViT-S/16 folder", "a transformers ViTModel (e.g. facebook/dino-vits16)")
        self.model = ViTModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.crop = int(self.model.config.image_size)
        # 256/224 is the DINO evaluation resize ratio; kept for tiny test models with other input sizes.
        self.resize = round(self.crop * 256 / 224)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = to_tensor(images[i : i + self.batch_size], self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD)
            hidden = self.model(pixel_values=x.to(self.device)).last_hidden_state  # (n, 1 + patches, D)
            feats.append(hidden[:, 0].float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)


class ClipEncoder:
    """CLIP image and text features (projected, L2-normalised)."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        path = require_model_folder(model_dir, "CLIP ViT-B/32 folder", "a transformers CLIPModel with its tokenizer (e.g. openai/clip-vit-base-patch32)")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tok_dir = path / "tokenizer" if (path / "tokenizer" / "vocab.json").is_file() else path
        if not (tok_dir / "vocab.json").is_file():
            raise FileNotFoundError(f"CLIP tokenizer files (vocab.json, merges.txt) not found in {path}")
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = to_tensor(images[i : i + self.batch_size], self.size, self.size, CLIP_MEAN, CLIP_STD)
            feats.append(_features(self.model.get_image_features(pixel_values=x.to(self.device))).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        feats = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            out = self.model.get_text_features(
                input_ids=enc.input_ids.to(self.device), attention_mask=enc.attention_mask.to(self.device)
            )
            feats.append(_features(out).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)
