"""Stage 1, multimodal language modelling: next-token cross-entropy on text positions only.

Data: text, image-caption and interleaved shards (batch: tokens, image_mask, pixels, loss_mask). `loss_mask[b, t]`
is True when the token at t + 1 is a text token to predict (image slots and pads are never targets). Trainable by
default, as KOSMOS-1: the MLLM, the connector and the last ViT block + ln_post (the rest of CLIP frozen).
Starts from `[model] init` (e.g. a Kosmos-2 conversion) or from random weights of `[model] preset`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import KosmosStage, StageModule, last_vit_block_prefixes, register, to_device


class LanguageModelling(StageModule):
    stage_name = "stage1"

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        batch = to_device(batch, self.device)
        tokens, image_mask, pixels = batch["tokens"], batch["image_mask"], batch["pixels"]
        embeds = self.kosmos.encode_images(pixels) if pixels.shape[0] else None
        hidden = self.kosmos.mllm_forward(tokens, embeds, image_mask)  # (B, T, D)
        mask = batch["loss_mask"][:, :-1]  # prediction at t targets token t + 1
        # Project only the positions that are scored: the (V x D) head over image slots and pads is wasted work.
        logits = self.kosmos.mllm.logits(hidden[:, :-1][mask]).float()  # (n, V)
        targets = tokens[:, 1:][mask]  # (n,)
        if targets.numel() == 0:
            # No text target in this batch: a zero loss that still spans the graph, so DDP/FSDP reductions line up.
            loss = hidden.float().sum() * 0.0
        else:
            loss = F.cross_entropy(logits, targets)
        return loss, {"loss/lm": loss.detach(), "lm/target_tokens": torch.tensor(float(targets.numel()))}


@register("stage1")
class Stage1(KosmosStage):
    default_trainable = ("gpt_model.", "img_connector.")

    def trainable_prefixes(self, cfg, kosmos) -> list[str]:
        return list(cfg.model.trainable) or [*self.default_trainable, *last_vit_block_prefixes(kosmos)]

    def assemble(self, cfg, kosmos, parts) -> LanguageModelling:
        return self.finish_model(cfg, LanguageModelling(kosmos))

    def count(self, batch: dict) -> tuple[int, int]:
        return int(batch["tokens"].shape[0]), int(batch["loss_mask"].sum())
