"""Semantic supervision for KOSMOS-G stage 3 (the U-Net stays frozen: every term acts through the conditioning).

Two switchable terms, each with its weight in the `[semantic]` table of the stage-3 config:

* **Token grounding** (TokenCompose-style, `grounding_weight`): custom attention processors on the U-Net's
  cross-attention layers (diffusers `attn2`) recompute the attention probabilities P (B, HW, L) at the chosen map
  sizes. For every entity, its attention map is A_e(x) = sum_l P[x, l] w_e[l], where w_e weighs the L context slots
  by how much they carry the entity:
    - context slots = the entity's token positions themselves when the context is token-aligned (a CLIP text
      encoding, or tests), i.e. w_e = indicator of entity_token_index;
    - for KOSMOS-G (context = AlignerNet's 77 queries), w_e[l] = the AlignerNet query-decoder attention of query l on
      the entity's MLLM tokens (word tokens and 64 image slots), averaged over layers and heads
      (`attach_aligner(kosmos.aligner)` installs the hooks that record it).
  Loss per entity and layer: (1 - share of A_e's mass inside the entity mask)^2 (token term) + BCE between A_e
  scaled to max 1 and the mask (pixel term), masks area-resized to each map size.
* **Segmentation consistency** (ControlNet++-style, `segmentation_weight`): for samples with t <= max_timestep, the
  predicted clean latent x0 is decoded by the frozen VAE (with gradients) and segmented by a frozen segmenter (a
  transformers model from `segmenter` = local folder); cross-entropy against the target map: `label_map` of the batch
  (COCO-Stuff ids) when present, else each entity mask labelled with its class (`entity_names` that are COCO-Stuff
  classes the segmenter knows). A mask whose class is unknown is ignored, as are pixels outside every mask: the
  target never comes from the segmenter's own prediction, which the loss could satisfy by changing nothing. The first
  batch with entity masks must give some target (a `label_map`, or at least one such name), else a ValueError says
  what to provide: a data set without targets would leave the term silently at zero.

[semantic] keys: grounding_weight (0), grounding_token_weight (1), grounding_pixel_weight (0.5), grounding_sizes
([16, 32]: attention map side lengths that are recorded; [] = all), segmentation_weight (0), segmenter ("" ; folder),
segmentation_max_timestep (200), segmentation_size (0 = decode size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SemanticConfig:
    grounding_weight: float = 0.0
    grounding_token_weight: float = 1.0
    grounding_pixel_weight: float = 0.5
    grounding_sizes: tuple[int, ...] = (16, 32)
    segmentation_weight: float = 0.0
    segmenter: str = ""
    segmentation_max_timestep: int = 200
    segmentation_size: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.grounding_weight or self.segmentation_weight)

    @classmethod
    def from_dict(cls, d: dict) -> SemanticConfig:
        from ..typed_tables import from_table

        return from_table(cls, d, "[semantic]")


@dataclass
class _Store:
    """Recorded probabilities of the current forward: layer name -> (B, HW, L) head-averaged, fp32."""

    unet: dict[str, Tensor] = field(default_factory=dict)
    # AlignerNet forwards of this step (stage 3 runs it for the batch and for the null prompt): each a list of
    # per-decoder-layer (B, Q, T) head-averaged query->token attention.
    aligner: list[list[Tensor]] = field(default_factory=list)


class RecordingCrossAttnProcessor:
    """diffusers attention processor that computes softmax(QK^T/sqrt(d)) explicitly (so it can be recorded and
    differentiated) for maps whose side length is selected, and uses SDPA otherwise. Output equals AttnProcessor2_0."""

    def __init__(self, name: str, store: _Store, sizes: tuple[int, ...]):
        self.name = name
        self.store = store
        self.sizes = set(sizes)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, ch, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, hh * ww).transpose(1, 2)
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        k = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, L, d)
        v = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        side = int(round(n**0.5))
        record = encoder_hidden_states is not None and side * side == n and (not self.sizes or side in self.sizes)
        if record:
            scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scale  # (B, h, N, L)
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = scores.softmax(-1)
            # Overwrite, not append: activation checkpointing re-runs this forward during backward.
            self.store.unet[self.name] = probs.mean(1)  # (B, N, L)
            out = (probs.to(v.dtype) @ v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_recorders(unet, store: _Store, sizes: tuple[int, ...]) -> int:
    """Put a RecordingCrossAttnProcessor on every cross-attention (attn2) layer; others keep theirs. Returns count."""
    procs = {}
    n = 0
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            procs[name] = RecordingCrossAttnProcessor(name, store, sizes)
            n += 1
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    return n


PIXEL_CLAMP = 1e-3


def grounding_loss(attn: Tensor, slot_weights: Tensor, mask: Tensor, *, token_weight: float = 1.0,
                   pixel_weight: float = 0.5, eps: float = 1e-8) -> Tensor:
    """One entity on one attention map.

    attn (HW, L) attention probabilities of a (square) map; slot_weights (L,) >= 0, how much each context slot
    stands for the entity; mask (R, R) float 0/1 full-image entity mask. Returns a scalar:
    token_weight * (1 - mass inside mask)^2 + pixel_weight * BCE(entity map / max, mask).
    """
    hw = attn.shape[0]
    side = int(round(hw**0.5))
    m = F.adaptive_avg_pool2d(mask[None, None].float(), (side, side)).view(hw).to(attn.dtype)  # soft mask
    a = attn @ slot_weights.to(attn.dtype)  # (HW,) entity's attention mass per position
    inside = (a * m).sum() / (a.sum() + eps)
    loss = token_weight * (1.0 - inside) ** 2
    if pixel_weight:
        # The max-scaled map is exactly 1 at its peak, where BCE's gradient (x - y) / (x (1 - x)) has no bound when
        # the peak lies outside the mask; 1 - eps rounds to 1 in fp32, so clamping there let 1e10 gradients through
        # (measured on the toy world). Clamped into [PIXEL_CLAMP, 1 - PIXEL_CLAMP] instead, the peak gets no pixel
        # gradient (the token term still moves its mass) and every other position at most about 1 / PIXEL_CLAMP.
        a_norm = (a / (a.max().detach() + eps)).clamp(PIXEL_CLAMP, 1 - PIXEL_CLAMP)
        loss = loss + pixel_weight * F.binary_cross_entropy(a_norm, (m > 0.5).to(a_norm.dtype))
    return loss


class SemanticSupervision:
    """The hook stage 3 calls after the U-Net forward (the contract: __init__([semantic], unet), attach_aligner, reset, losses)."""

    def __init__(self, cfg: dict, unet):
        self.cfg = SemanticConfig.from_dict(cfg)
        self.unet = unet
        self.store = _Store()
        self.segmenter = None
        self._targets_checked = False
        self._aligner_hooks: list = []
        if self.cfg.grounding_weight:
            n = install_recorders(unet, self.store, self.cfg.grounding_sizes)
            log.info("semantic grounding: recording %d cross-attention layers at map sizes %s", n,
                     list(self.cfg.grounding_sizes) or "all")
        if self.cfg.segmentation_weight:
            if not self.cfg.segmenter:
                raise ValueError("[semantic] segmentation_weight is set, so [semantic] segmenter must name a local "
                                 "transformers segmentation model folder (SegFormer / UperNet / Mask2Former)")
            from kosmos_g_core.layout.segmenter import Segmenter

            device = next(unet.parameters()).device
            self.segmenter = Segmenter.from_pretrained(self.cfg.segmenter, device=device)

    # -- AlignerNet attention (KOSMOS-G context) ---------------------------------------------------------------
    def attach_aligner(self, aligner) -> None:
        """Record AlignerNet M's query-decoder cross-attention (query -> MLLM token), so entity token positions
        can be mapped onto the 77 context slots the U-Net attends to."""
        for h in self._aligner_hooks:
            h.remove()
        self._aligner_hooks = []
        for layer in aligner.encoder.layers:
            self._aligner_hooks.append(layer.encoder_attn.register_forward_hook(self._aligner_hook, with_kwargs=True))

    def _aligner_hook(self, module, args, kwargs, output) -> None:
        x, memory = args[0], args[1]
        mask = kwargs.get("attn_mask")
        b, q_len, d = x.shape
        h = module.heads
        q = module.q_proj(x).view(b, q_len, h, d // h).transpose(1, 2).float()
        k = module.k_proj(memory).view(b, memory.shape[1], h, d // h).transpose(1, 2).float()
        scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if not self.store.aligner or len(self.store.aligner[-1]) >= len(self._aligner_hooks):
            self.store.aligner.append([])  # first decoder layer of a new AlignerNet forward
        self.store.aligner[-1].append(scores.softmax(-1).mean(1))  # (B, Q, T)

    def _aligner_attention(self, batch_size: int) -> list[Tensor] | None:
        """The recorded AlignerNet forward of the batch: batch size B and the longest token sequence (the null
        prompt [<s>] is one token)."""
        runs = [r for r in self.store.aligner if r and r[0].shape[0] == batch_size]
        return max(runs, key=lambda r: r[0].shape[-1]) if runs else None

    def _slot_weights(self, b: int, idx: Tensor, context_len: int, aligner: list[Tensor] | None) -> Tensor:
        """(L,) weights of the context slots for one entity of sample b."""
        if aligner is not None:
            w = torch.stack([a[b] for a in aligner]).mean(0)  # (Q, T), averaged over decoder layers
            idx = idx[idx < w.shape[1]]
            return w[:, idx].sum(-1)  # (Q,)
        if int(idx.max()) >= context_len:
            raise ValueError(
                f"entity_token_index refers to position {int(idx.max())}, beyond the {context_len} context slots the "
                "U-Net attends to: these are MLLM token positions, so call SemanticSupervision.attach_aligner("
                "kosmos.aligner) in stage 3 to map them through AlignerNet's attention")
        w = torch.zeros(context_len)
        w[idx] = 1.0
        return w

    # -- the losses --------------------------------------------------------------------------------------------
    def losses(self, *, batch: dict, noise_pred: Tensor, noisy_latents: Tensor, timesteps: Tensor,
               noise_scheduler, vae) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        try:
            if self.cfg.grounding_weight:
                out["semantic/grounding"] = self.cfg.grounding_weight * self._grounding(batch, noise_pred)
            if self.cfg.segmentation_weight:
                out["semantic/segmentation"] = self.cfg.segmentation_weight * self._segmentation(
                    batch, noise_pred, noisy_latents, timesteps, noise_scheduler, vae)
        finally:
            self.reset()
        return out

    def reset(self) -> None:
        """Forget recorded attention. Stage 3 calls it before each forward: activation checkpointing re-runs the
        recorded layers during backward, and those records belong to a freed graph."""
        self.store.unet.clear()
        self.store.aligner.clear()

    def _grounding(self, batch: dict, noise_pred: Tensor) -> Tensor:
        maps = list(self.store.unet.values())
        masks = batch.get("entity_masks") or []
        index = batch.get("entity_token_index") or []
        dropped = batch.get("cond_dropped")  # optional (B,) bool: samples whose condition was nulled for CFG
        terms = []
        if maps:
            context_len = maps[0].shape[-1]
            aligner = self._aligner_attention(maps[0].shape[0])
            for b, (ent_masks, ent_idx) in enumerate(zip(masks, index, strict=False)):
                if dropped is not None and bool(dropped[b]):
                    continue
                for e, idx in enumerate(ent_idx):
                    idx = torch.as_tensor(idx, dtype=torch.long)
                    if idx.numel() == 0 or e >= ent_masks.shape[0] or ent_masks[e].sum() == 0:
                        continue
                    w = self._slot_weights(b, idx.to(maps[0].device), context_len, aligner).to(maps[0].device)
                    mask = ent_masks[e].to(maps[0].device)
                    for attn in maps:
                        terms.append(grounding_loss(attn[b], w, mask, token_weight=self.cfg.grounding_token_weight,
                                                    pixel_weight=self.cfg.grounding_pixel_weight))
        if not terms:
            return noise_pred.sum() * 0.0  # keeps the graph; no entity in this batch
        return torch.stack(terms).mean()

    def _segmentation(self, batch: dict, noise_pred: Tensor, noisy: Tensor, timesteps: Tensor, scheduler,
                      vae) -> Tensor:
        self._check_targets(batch)  # before the timestep window, so a data set without targets fails at step 1
        keep = timesteps <= self.cfg.segmentation_max_timestep
        if not bool(keep.any()):
            return noise_pred.sum() * 0.0
        sel = keep.nonzero()[:, 0]
        acp = scheduler.alphas_cumprod.to(noisy.device)[timesteps[sel]].view(-1, 1, 1, 1).float()
        x_t, pred = noisy[sel].float(), noise_pred[sel].float()
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            x0 = (x_t - (1 - acp).sqrt() * pred) / acp.sqrt()
        elif kind == "v_prediction":
            x0 = acp.sqrt() * x_t - (1 - acp).sqrt() * pred
        else:
            x0 = pred
        image = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample.float()  # (n, 3, H, W) in [-1,1]
        image = (image / 2 + 0.5).clamp(0, 1)
        if self.cfg.segmentation_size:
            image = F.interpolate(image, size=(self.cfg.segmentation_size,) * 2, mode="bilinear", align_corners=False)
        logits = self.segmenter.logits(image)  # (n, C, h, w)
        target = self._targets(batch, sel.tolist(), logits)
        if target is None or not bool((target != 255).any()):
            return noise_pred.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=255)

    def _mask_class(self, name: str) -> int | None:
        """An entity name's class in the segmenter's label space; None when the name is no COCO-Stuff class (after
        synonyms) or the segmenter's label space lacks it."""
        from kosmos_g_core.layout.labels import CLASS_ID
        from kosmos_g_core.layout.vocabulary import lookup

        found = lookup(name)
        if found is None:
            return None
        c = int(self.segmenter.from_internal[CLASS_ID[found]])
        return None if c == 255 else c

    def _check_targets(self, batch: dict) -> None:
        """Once, at the first batch with entity masks: some mask must get a target. Later batches are not checked,
        so one sample whose entities are outside COCO-Stuff cannot end a long run; its masks are simply ignored."""
        if self._targets_checked:
            return
        masks = batch.get("entity_masks") or []
        if not any(m.shape[0] for m in masks):
            return  # nothing to label in this batch: the next batch with masks is the first
        self._targets_checked = True
        if batch.get("label_map") is not None:
            return
        names = batch.get("entity_names") or []
        given = [n for b, m in enumerate(masks) if b < len(names) for n in names[b][: m.shape[0]]]
        if any(self._mask_class(n) is not None for n in given):
            return
        what = (f"its entity_names {sorted(set(given))[:8]} are no COCO-Stuff class that the segmenter "
                f"{self.cfg.segmenter} knows" if given else "no `entity_names`")
        raise ValueError(
            f"[semantic] segmentation_weight: the first batch has entity masks but no target for any of them (no "
            f"`label_map`, and {what}). Give the batch "
            "a `label_map` (COCO-Stuff ids, 255 = ignore) or entity names that are COCO-Stuff classes (sheep, dog, "
            "grass, sky ...), or set [semantic] segmentation_weight = 0")

    def _targets(self, batch: dict, samples: list[int], logits: Tensor) -> Tensor | None:
        """(n, h, w) long in the segmenter's label space, 255 = ignore."""
        import numpy as np

        h, w = logits.shape[-2:]
        lut = torch.from_numpy(self.segmenter.from_internal.astype(np.int64)).to(logits.device)
        out = torch.full((len(samples), h, w), 255, dtype=torch.long, device=logits.device)
        label_map = batch.get("label_map")
        masks = batch.get("entity_masks") or []
        names = batch.get("entity_names") or []
        for k, b in enumerate(samples):
            if label_map is not None:
                lab = F.interpolate(label_map[b][None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
                out[k] = lut[lab.clamp(0, 255)]
                continue
            if b >= len(masks):
                continue
            for e in range(masks[b].shape[0]):
                m = F.interpolate(masks[b][e][None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
                if not bool(m.any()):
                    continue
                cls = self._mask_class(names[b][e]) if b < len(names) and e < len(names[b]) else None
                if cls is not None:  # unknown class: the mask stays 255 (ignored)
                    out[k][m] = cls
        return out
