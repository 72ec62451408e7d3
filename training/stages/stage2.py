"""Stage 2, image-decoder aligning (official `kosmos-g/unilm/models/aligner.py:44-67`,
`kosmos-g/unilm/models/kosmosg.py:234-238`): text only; MLLM, vision tower and connector frozen;
AlignerNet M and N trained.

    z    = M(MLLM(tokens))                                  (B, 77, 768)
    mse  = mean((z - CLIP_text(clip_ids).last_hidden)^2)    frozen SD1.5 CLIP text encoder, 77 padded ids
    rec  = mean((N(z, T) - MLLM(tokens))^2) * 77 / T        over all B x T x 2048 elements, pads included
    loss = mse + rec

Against an SDXL base (not in the official code; `[sd15] path` an SDXL folder) M has SDXL's heads and the targets are
what SDXL's pipeline feeds its U-Net (`training.sd15.sdxl_text_target`):

    z       = M(MLLM(tokens))                               (B, 77, 2048)
    mse     = mean((z - concat(CLIP-L(ids)[-2], bigG(ids_2)[-2]))^2)     penultimate hidden states, 768 + 1280
    pooled  = mean((pool(z) - bigG(ids_2).text_embeds)^2)   (B, 1280), pool = KosmosG.pooled (AlignerNet's pooled head)
    loss    = mse + pooled_weight * pooled + rec            rec as above, N reading the 2048-wide z

Captions over 75 CLIP tokens are dropped by the loader (caption_filter); longer-than-85 SentencePiece tokens too
(the loader's stage-2 default). The frozen MLLM keeps train-mode dropout, as the official run did, so its hidden
states are computed every step; the CLIP targets depend on the caption alone and, with `[sd15] cache_outputs`, come
from the cache files of `python -m training.build_cache` (batch["clip_target"], SDXL also batch["clip_pooled"];
training/data/frozen_cache.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sd15 import TEXT_TARGET_NAMES, clip_caption_filter, text_targets
from .base import KosmosStage, StageModule, cache_identity, check_condition_width, register, to_device


class Aligning(StageModule):
    stage_name = "stage2"

    def __init__(self, kosmos, pooled_weight: float = 1.0):
        super().__init__(kosmos)
        self.pooled_weight = pooled_weight  # SDXL: weight of the pooled-vector MSE ([model] pooled_weight)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = to_device(batch["tokens"], self.device)  # (B, T): [<s>] + caption
        text_encoder_2 = self.frozen.get("text_encoder_2")  # SDXL's bigG encoder; None for SD1.5
        with torch.no_grad():
            hidden = self.kosmos.mllm_forward(tokens)  # (B, T, D) frozen MLLM, train-mode dropout: never cached
            if "clip_target" in batch:  # (B, 77, 768) (SDXL: (B, 77, 2048) + (B, 1280)) from the frozen-output cache
                targets = {k: batch[k].to(self.device) for k in TEXT_TARGET_NAMES if k in batch}
            else:
                targets = text_targets(self.frozen["text_encoder"], self.frozen["clip_tokenizer"],
                                       list(batch["captions"]), self.device, text_encoder_2,
                                       self.frozen.get("clip_tokenizer_2"))
        z = self.kosmos.align(hidden, tokens)  # (B, 77, 768); SDXL (B, 77, 2048)
        mse = F.mse_loss(z.float(), targets["clip_target"].float())
        T = tokens.shape[1]
        rec = self.kosmos.aligner.reconstruct(z, T)  # (B, T, D)
        rec_loss = F.mse_loss(rec.float(), hidden.float()) * (z.shape[1] / T)
        if text_encoder_2 is None:
            loss = mse + rec_loss
            return loss, {"loss/mse": mse.detach(), "loss/rec": rec_loss.detach()}
        pooled = F.mse_loss(self.kosmos.pooled(z).float(), targets["clip_pooled"].float())  # (B, 1280) vs bigG's
        loss = mse + self.pooled_weight * pooled + rec_loss
        return loss, {"loss/mse": mse.detach(), "loss/pooled": pooled.detach(), "loss/rec": rec_loss.detach()}


@register("stage2")
class Stage2(KosmosStage):
    default_trainable = ("aligner.",)
    find_unused_parameters = False   # every trainable tensor (M and N) is used by every batch
    aligner_mode = "with_decoder"
    sd15_parts = ("text_encoder",)
    caches_frozen_outputs = True     # [sd15] cache_outputs: see frozen_cache below

    def assemble(self, cfg, kosmos, parts) -> Aligning:
        if parts.is_sdxl:  # SDXL's context: both encoders' penultimate states side by side; pooled: bigG's projection
            check_condition_width(kosmos, parts.text_encoder.config.hidden_size + parts.text_encoder_2.config.hidden_size,
                                  "SDXL's two text encoders' concatenated output", cfg.sd15.path,
                                  pooled=parts.text_encoder_2.config.projection_dim)
        else:
            check_condition_width(kosmos, parts.text_encoder.config.hidden_size, "the CLIP text encoder", cfg.sd15.path)
        module = Aligning(kosmos, cfg.model.pooled_weight)
        module.add_frozen("text_encoder", parts.text_encoder)
        module.add_frozen("clip_tokenizer", parts.tokenizer)
        if parts.is_sdxl:
            module.add_frozen("text_encoder_2", parts.text_encoder_2)
            module.add_frozen("clip_tokenizer_2", parts.tokenizer_2)
        return self.finish_model(cfg, module)

    def frozen_cache(self, cfg, module: StageModule):
        if not cfg.sd15.cache_outputs:
            return None
        from training.data.frozen_cache import FrozenCache

        frozen = module.frozen
        return FrozenCache(cache_identity(cfg, frozen["text_encoder"], frozen["clip_tokenizer"],
                                          frozen.get("text_encoder_2"), frozen.get("clip_tokenizer_2")))

    def caption_filter(self, module: StageModule):
        """Captions the frozen CLIP text encoder would truncate are dropped (its tokenizer decides)."""
        return clip_caption_filter(module.frozen["clip_tokenizer"])
