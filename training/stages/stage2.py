"""Stage 2, image-decoder aligning (official `kosmos-g/unilm/models/aligner.py:44-67`,
`kosmos-g/unilm/models/kosmosg.py:234-238`): text only; MLLM, vision tower and connector frozen;
AlignerNet M and N trained.

    z    = M(MLLM(tokens))                                  (B, 77, 768)
    mse  = mean((z - CLIP_text(clip_ids).last_hidden)^2)    frozen SD1.5 CLIP text encoder, 77 padded ids
    rec  = mean((N(z, T) - MLLM(tokens))^2) * 77 / T        over all B x T x 2048 elements, pads included
    loss = mse + rec

Captions over 75 CLIP tokens are dropped by the loader (caption_filter); longer-than-85 SentencePiece tokens too
(the loader's stage-2 default). The frozen MLLM keeps train-mode dropout, as the official run did, so its hidden
states are computed every step; the CLIP target depends on the caption alone and, with `[sd15] cache_outputs`, comes
from the cache files of `python -m training.build_cache` (batch["clip_target"], training/data/frozen_cache.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sd15 import clip_caption_filter, clip_text_target
from .base import KosmosStage, StageModule, cache_identity, check_condition_width, register, to_device


class Aligning(StageModule):
    stage_name = "stage2"

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = to_device(batch["tokens"], self.device)  # (B, T): [<s>] + caption
        text_encoder, clip_tokenizer = self.frozen["text_encoder"], self.frozen["clip_tokenizer"]
        with torch.no_grad():
            hidden = self.kosmos.mllm_forward(tokens)  # (B, T, D) frozen MLLM, train-mode dropout: never cached
            if "clip_target" in batch:  # (B, 77, 768) from the frozen-output cache
                target = batch["clip_target"].to(self.device)
            else:
                target = clip_text_target(text_encoder, clip_tokenizer, list(batch["captions"]), self.device)
        z = self.kosmos.align(hidden, tokens)  # (B, 77, 768)
        mse = F.mse_loss(z.float(), target.float())
        T = tokens.shape[1]
        rec = self.kosmos.aligner.reconstruct(z, T)  # (B, T, D)
        rec_loss = F.mse_loss(rec.float(), hidden.float()) * (z.shape[1] / T)
        loss = mse + rec_loss
        return loss, {"loss/mse": mse.detach(), "loss/rec": rec_loss.detach()}


@register("stage2")
class Stage2(KosmosStage):
    default_trainable = ("aligner.",)
    find_unused_parameters = False   # every trainable tensor (M and N) is used by every batch
    aligner_mode = "with_decoder"
    sd15_parts = ("text_encoder",)
    caches_frozen_outputs = True     # [sd15] cache_outputs: see frozen_cache below

    def assemble(self, cfg, kosmos, parts) -> Aligning:
        check_condition_width(kosmos, parts.text_encoder.config.hidden_size, "the CLIP text encoder", cfg.sd15.path)
        module = Aligning(kosmos)
        module.add_frozen("text_encoder", parts.text_encoder)
        module.add_frozen("clip_tokenizer", parts.tokenizer)
        return self.finish_model(cfg, module)

    def frozen_cache(self, cfg, module: StageModule):
        if not cfg.sd15.cache_outputs:
            return None
        from training.data.frozen_cache import FrozenCache

        return FrozenCache(cache_identity(cfg, module.frozen["text_encoder"], module.frozen["clip_tokenizer"]))

    def caption_filter(self, module: StageModule):
        """Captions the frozen CLIP text encoder would truncate are dropped (its tokenizer decides)."""
        return clip_caption_filter(module.frozen["clip_tokenizer"])
