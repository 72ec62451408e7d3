"""KOSMOS-G: interleaved text and images in, SD1.5 cross-attention conditioning (B, 77, 768) out.

Module names reproduce the official fairseq model (`kosmos-g/unilm/models/kosmosg.py`), so an official state dict
maps key for key: `gpt_model.decoder` (MLLM), `img_model.visual` (CLIP ViT), `img_connector` (resampler),
`aligner` (AlignerNet). The diffusion parts are not here: the conditioning goes to a stock SD1.5 U-Net.

The SDXL variant (an AlignerNet with SDXL's output heads, `KosmosGConfig.sdxl()`) makes SDXL's conditioning instead:
every method below returns the (B, 77, 2048) context where the SD1.5 model returns its (B, 77, 768) one, and
`pooled(context)` gives the (B, 1280) pooled vector of any such context (the prompt's, the null condition's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .aligner import AlignerNet
from .config import KosmosGConfig
from .connector import Connector
from .layers import LayerStack, Ops
from .mllm import MLLM
from .ops import CoreOps
from .prompt import InterleavedPrompt, PromptBatch, collate, negative_prompt
from .tokenizer import KosmosTokenizer
from .vision import VisionTransformer


class Conditioning(NamedTuple):
    cond: torch.Tensor  # (B, 77, 768); (B, 77, 2048) for SDXL, whose pooled vectors come from KosmosG.pooled
    uncond: torch.Tensor  # (B, 77, 768) likewise: KOSMOS-G's own null embedding, not CLIP("")


PromptLike = InterleavedPrompt | str


class KosmosG(nn.Module):
    def __init__(self, config: KosmosGConfig, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, ops: Ops = CoreOps):
        super().__init__()
        f = {"dtype": dtype, "device": device, "ops": ops}
        self.config = config
        self.gpt_model = nn.Module()
        self.gpt_model.decoder = MLLM(config.mllm, **f)
        self.img_model = nn.Module()
        self.img_model.visual = VisionTransformer(config.vision, **f)
        self.img_connector = Connector(config.connector, config.vision.width, config.mllm.dim, **f)
        self.aligner = AlignerNet(config.aligner, config.mllm.dim, **f) if config.aligner is not None else None
        self.tokenizer: KosmosTokenizer | None = None
        # None computes in the weights' dtype (the official fp16 inference). A host that stores half-precision
        # weights but wants fp32 maths (ComfyUI on a CPU) sets float32 here and passes casting `ops`.
        self.compute_dtype: torch.dtype | None = None
        self._null_cache: tuple[tuple, torch.Tensor] | None = None  # (_null_key(), (1, 77, C)): see null_condition

    @property
    def mllm(self) -> MLLM:
        return self.gpt_model.decoder

    @property
    def vision(self) -> VisionTransformer:
        return self.img_model.visual

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations are computed in (`compute_dtype`, else the weights' dtype)."""
        return self.compute_dtype or self.img_connector.latent_query.dtype

    @property
    def device(self) -> torch.device:
        return self.img_connector.latent_query.device

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, LayerStack):
                m.gradient_checkpointing = enabled

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) CLIP-normalised -> (N, 64, D) embeddings for the MLLM's image slots."""
        return self.img_connector(self.vision(pixels.to(self.dtype)))

    def mllm_forward(self, tokens: torch.Tensor, image_embeds: torch.Tensor | None = None,
                     image_mask: torch.Tensor | None = None, return_logits: bool = False):
        """(B, T) ids [+ (N, 64, D) image embeddings, (B, T) slot mask] -> hidden (B, T, D) [, logits (B, T, V)]."""
        hidden = self.mllm(tokens, image_embeds, image_mask, dtype=self.dtype)
        return (hidden, self.mllm.logits(hidden)) if return_logits else hidden

    def _require_aligner(self) -> AlignerNet:
        if self.aligner is None:
            raise RuntimeError(
                "this KOSMOS-G model has no AlignerNet (an MLLM-only checkpoint, e.g. converted from Kosmos-2): "
                "train stages 2 and 3 before it can condition a U-Net"
            )
        return self.aligner

    def align(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """AlignerNet M: (B, T, D) hidden states of `tokens` (B, T) -> (B, 77, 768) (SDXL: (B, 77, 2048)); pads
        (id 1) are masked."""
        return self._require_aligner()(hidden, tokens.eq(self.config.mllm.pad_id))

    def pooled(self, context: torch.Tensor) -> torch.Tensor:
        """SDXL variant: the pooled vector (B, 1280) of a context (B, 77, 2048) made by `align`, `condition` or
        `null_condition` (SDXL's `pooled_output`). An SD1.5 model has none: RuntimeError."""
        return self._require_aligner().pool(context.to(self.dtype))

    def condition(self, batch: PromptBatch) -> torch.Tensor:
        """A collated batch of prompts -> conditioning (B, 77, 768) (SDXL: the (B, 77, 2048) context)."""
        batch = batch.to(self.device, self.dtype)
        embeds = self.encode_images(batch.pixels) if batch.pixels.shape[0] else None
        return self.align(self.mllm_forward(batch.tokens, embeds, batch.image_mask), batch.tokens)

    def _require_tokenizer(self) -> KosmosTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached: load the model with load_checkpoint() or set model.tokenizer")
        return self.tokenizer

    def collate(self, prompts: Sequence[PromptLike]) -> PromptBatch:
        prompts = [InterleavedPrompt.from_text(p) if isinstance(p, str) else p for p in prompts]
        return collate(prompts, self._require_tokenizer(), image_size=self.config.vision.image_size,
                       image_tokens=self.config.image_tokens, max_length=self.config.max_prompt_tokens)

    def null_condition(self, negative: str | None = None) -> torch.Tensor:
        """The unconditional embedding (1, 77, 768) (SDXL: (1, 77, 2048)): M(MLLM([<s>])), or M(MLLM([<s>] +
        negative)) when given.

        The empty negative's embedding is the same for every prompt, so under inference_mode (`encode`, which the
        nodes and samplers call) it is computed once and kept until the weights, their dtype or their device change
        (`_null_key`). Anywhere else it is always computed: in stage 3 the weights move every step, and the trainer's
        sample hook may see FSDP's sharded parameters, whose in-place updates the key would not be sure to see."""
        if negative or not torch.is_inference_mode_enabled() or self.training:
            return self.condition(self.collate([negative_prompt(negative)]))
        key = self._null_key()
        if key is None:
            return self.condition(self.collate([negative_prompt(None)]))
        if self._null_cache is None or self._null_cache[0] != key:
            self._null_cache = (key, self.condition(self.collate([negative_prompt(None)])).clone())
        return self._null_cache[1]

    def _null_key(self) -> tuple | None:
        """What the cached null embedding depends on: the compute dtype and, per parameter, its identity, version
        counter (bumped by every in-place write: optimiser steps, load_state_dict, weight patches), device and dtype.
        About 600 tuples for the full model: microseconds, against a whole MLLM forward. None (do not cache) when
        the weights were made under inference_mode, whose tensors have no version counter."""
        try:
            return (self.compute_dtype, tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters()))
        except RuntimeError:
            return None

    @torch.inference_mode()
    def encode(self, prompts: PromptLike | Sequence[PromptLike], negative: str | None = None) -> Conditioning:
        """Prompts (an InterleavedPrompt, a plain string, or a list of them) -> Conditioning(cond, uncond).

        A batch is right-padded; padding does not change any sample's conditioning (causal MLLM, masked AlignerNet).
        """
        if isinstance(prompts, (str, InterleavedPrompt)):
            prompts = [prompts]
        cond = self.condition(self.collate(prompts))
        uncond = self.null_condition(negative).expand_as(cond).contiguous()
        return Conditioning(cond, uncond)
