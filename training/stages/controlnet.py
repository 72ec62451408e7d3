"""The segmentation-ControlNet stage ("controlnet"): a diffusers `ControlNetModel` copied from the frozen U-Net's
encoder learns to make the U-Net follow a layout (the label map rendered in a segmentation palette), as
control_v11p_sd15_seg was trained; optionally with semantic supervision (ALDM / ControlNet++ style).

    python -m training.train --config <a controlnet config> (the layout world writes one: training/layout_world/study.py)

    latents  = VAE.encode(picture).sample() * scaling_factor          frozen
    c        = CLIP(caption), "" on [data] caption_dropout            frozen
    x_t      = DDPM.add_noise(latents, eps, t), t ~ U{0..999}
    down, mid = ControlNet(x_t, t, c, hint)                           trainable
    loss     = mean (UNet(x_t, t, c, + down, + mid) - eps)^2          frozen U-Net
             + [semantic] segmentation_weight * CE(segmenter(VAE.decode(x0_hat)), label map)   for t <= max_timestep

Config tables it reads (everything else is the shared trainer's):
* [sd15] path: the diffusers SD1.5-layout folder of the base model (unet/, vae/, text_encoder/, tokenizer/).
* [model] init: a ControlNet file this stage exported, to continue from; "" = copy the U-Net's encoder
  (`ControlNetModel.from_unet`, zero-initialised outputs: training starts from the unchanged U-Net).
* [data] (typed: training.data.layout.ControlNetDataConfig): batch_size, shards, palette, caption_dropout.
* [semantic]: training/stages/semantic_supervision.py; its segmentation term is given the batch's label map.

The export is one .safetensors file: the ControlNet's weights (fp16 by default, diffusers key names) with its
diffusers config in the metadata, so `load_controlnet` rebuilds exactly the trained model. ComfyUI's ControlNet loader
infers the U-Net architecture from the weights and knows only the SD families: the layout world's tiny ControlNets do
not load there (measured with ComfyUI v0.33.0: it finds no U-Net config); an SD1.5-sized one is untested in ComfyUI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from kosmos_g_core.dtypes import dtype_from_name

from ..data.layout import ControlNetCollate, ControlNetDataConfig, LayoutLoader, ShardLayouts
from ..distributed import unwrap
from ..sd15 import clip_ids, load_sd15
from .base import Stage, frozen_dtype, register, to_device

log = logging.getLogger(__name__)

FORMAT = "kosmos_g_controlnet"


def controlnet_from_unet(unet, vae) -> nn.Module:
    """A ControlNet copied from `unet`, its hint encoder downsampling as much as the VAE does (x8 for SD1.5: the
    stock (16, 32, 96, 256) channels; x4: (16, 32, 96))."""
    from diffusers import ControlNetModel

    downsamplings = len(vae.config.block_out_channels) - 1
    channels = (16, 32, 96, 256)[: downsamplings + 1]
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


def save_controlnet(model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float16,
                    metadata: dict[str, str] | None = None) -> Path:
    """One .safetensors: weights in `dtype` and the diffusers config (metadata `config`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(dict(model.config))} | (metadata or {})
    save_file(state, str(path), metadata=meta)
    return path


def load_controlnet(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The ControlNet `save_controlnet` wrote, rebuilt from its own config."""
    from diffusers import ControlNetModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ControlNet file {path} not found (expected the export of the controlnet stage)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{path} is not a ControlNet exported by the controlnet stage (metadata format = "
                         f"{meta.get('format')!r}, expected {FORMAT!r} with its config)")
    config = {k: v for k, v in json.loads(meta["config"]).items() if not k.startswith("_")}
    model = ControlNetModel.from_config(config)
    model.load_state_dict(load_file(str(path)))
    model = model.to(device)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


class ControlNetTraining(nn.Module):
    """What the trainer wraps: the ControlNet (trainable) plus the frozen base model outside the module tree."""

    stage_name = "controlnet"

    def __init__(self, controlnet: nn.Module, parts, caption_dropout: float, semantic=None):
        super().__init__()
        self.controlnet = controlnet
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "semantic", semantic)
        object.__setattr__(self, "text_cache", {})  # caption -> (77, C): the frozen encoder runs once per caption
        self.caption_dropout = caption_dropout

    @property
    def device(self) -> torch.device:
        return next(self.controlnet.parameters()).device

    @torch.no_grad()
    def encode(self, captions: list[str]) -> Tensor:
        missing = sorted({c for c in captions if c not in self.text_cache})
        if missing:
            ids = clip_ids(self.parts.tokenizer, missing, self.device)
            for c, e in zip(missing, self.parts.text_encoder(ids).last_hidden_state, strict=True):
                self.text_cache[c] = e
        return torch.stack([self.text_cache[c] for c in captions])  # (B, 77, C)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        batch = to_device(batch, self.device)
        unet, vae, scheduler = self.parts.unet, self.parts.vae, self.parts.noise_scheduler
        captions = list(batch["captions"])
        b = len(captions)
        drop = torch.rand(b) < self.caption_dropout  # CPU draw: the same on every device
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        context = self.encode(captions).to(unet.dtype)
        with torch.no_grad():
            latents = vae.encode(batch["pictures"].to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if self.semantic is not None:
            self.semantic.reset()
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=context,
                                    controlnet_cond=batch["hints"].to(noisy.dtype), return_dict=False)
        noise_pred = unet(noisy, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        diffusion = (noise_pred.float() - noise.float()).pow(2).mean()
        loss, metrics = diffusion, {"loss/diffusion": diffusion.detach()}
        if self.semantic is not None:
            batch["label_map"] = batch["labels"]  # (B, S, S) COCO-Stuff ids: the segmentation term's target
            terms = self.semantic.losses(batch=batch, noise_pred=noise_pred, noisy_latents=noisy,
                                         timesteps=timesteps, noise_scheduler=scheduler, vae=vae)
            for name, value in terms.items():
                loss = loss + value
                metrics[f"loss/{name}"] = value.detach()
        return loss, metrics


@register("controlnet")
class ControlNetStage(Stage):
    def check_config(self, cfg) -> ControlNetDataConfig:
        from .semantic_supervision import SemanticConfig

        SemanticConfig.from_dict(cfg.semantic)
        if not cfg.sd15.path:
            raise ValueError("[sd15] path is empty: the controlnet stage needs the base model's diffusers folder")
        from ..sd15 import SDXL, base_kind

        if base_kind(cfg.sd15.path) == SDXL:
            raise ValueError(f"[sd15] path {cfg.sd15.path} is an SDXL base: the controlnet stage trains a ControlNet "
                             "for SD1.5-layout bases only (an SDXL ControlNet needs SDXL's added conditions)")
        return ControlNetDataConfig.from_table(cfg.data)

    def build_model(self, cfg, device: torch.device) -> ControlNetTraining:
        from .semantic_supervision import SemanticConfig, SemanticSupervision

        data = self.check_config(cfg)
        parts = load_sd15(cfg.sd15.path, device=device, dtype=frozen_dtype(cfg), text_encoder=True, unet=True, vae=True,
                          tokenizer_path=cfg.sd15.tokenizer)
        if cfg.model.init:
            controlnet = load_controlnet(cfg.model.init, device)
            log.info("ControlNet initialised from %s", cfg.model.init)
        else:
            controlnet = controlnet_from_unet(parts.unet, parts.vae).to(device)
        controlnet.train().requires_grad_(True)
        semantic = None
        if SemanticConfig.from_dict(cfg.semantic).enabled:
            semantic = SemanticSupervision(dict(cfg.semantic), parts.unet)
            log.info("semantic supervision enabled: %s", cfg.semantic)
        n = sum(p.numel() for p in controlnet.parameters())
        log.info("ControlNet: %.2fM trainable parameters on a frozen base of %s", n / 1e6, cfg.sd15.path)
        return ControlNetTraining(controlnet, parts, data.caption_dropout, semantic)

    def build_dataloader(self, cfg, model: nn.Module, rank: int, world_size: int) -> LayoutLoader:
        data = self.check_config(cfg)
        return LayoutLoader(ShardLayouts(list(data.shards)), data.batch_size, seed=cfg.run.seed, rank=rank,
                            world_size=world_size, collate_fn=ControlNetCollate(data.palette))

    def count(self, batch: dict) -> tuple[int, int]:
        return len(batch["captions"]), 0

    def export(self, model: nn.Module, path, cfg) -> None:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() != 0:
            return
        dtype = dtype_from_name(cfg.checkpoint.export_dtype, "[checkpoint] export_dtype")
        save_controlnet(unwrap(model).controlnet, path, dtype, {"trained_stage": "controlnet",
                                                                "palette": ControlNetDataConfig.from_table(
                                                                    cfg.data).palette})
        log.info("exported ControlNet %s", path)
