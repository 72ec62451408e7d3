"""Classifier-free-guided sampling with stock diffusers components and a precomputed (B, 77, 768) condition.

Same loop as KOSMOS-G's `Diffusionmodel.sample` (official `kosmos-g/unilm/models/diffusion.py:86-133`, decode 264-273): latents ~ N(0, I) * init_noise_sigma,
`scale_model_input`, the U-Net on [uncond; cond], eps = u + s * (c - u), `scheduler.step(..., eta=0)`, VAE decode of
latents / scaling_factor, then (x / 2 + 0.5).clamp(0, 1). Works for SD1.5 and for the toy-world base model, which
uses the same folder layout and classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.sd15 import square_time_ids

log = logging.getLogger(__name__)

SCHEDULERS = ("dpmsolver++", "ddim")


@dataclass(frozen=True)
class SamplerSettings:
    scheduler: str = "dpmsolver++"
    steps: int = 100
    guidance: float = 7.5
    resolution: int = 512

    @classmethod
    def dreambench(cls) -> SamplerSettings:
        return cls("dpmsolver++", 100, 7.5, 512)

    @classmethod
    def coco(cls) -> SamplerSettings:
        # sample_kosmosg_coco.py: DDIM 250 steps, guidance 3.0
        return cls("ddim", 250, 3.0, 512)


def build_scheduler(name: str, folder: str | Path):
    """The sampling scheduler from the model's own `scheduler/` config (betas, offsets), as the official code does."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"expected a diffusers scheduler config at {folder / 'scheduler'}")
    return scheduler_from_config(name, DDIMScheduler.load_config(folder, subfolder="scheduler"))


def scheduler_from_config(name: str, config):
    """The sampling scheduler `name` on a model's noise-schedule config (a diffusers scheduler config dict)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpmsolver++":
        # diffusers 0.21.4 defaults used by KOSMOS-G, spelled out so newer diffusers cannot change them.
        return DPMSolverMultistepScheduler.from_config(
            config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            timestep_spacing="linspace",
            prediction_type="epsilon",
        )
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")


class DiffusionSampler:
    def __init__(self, unet, vae, scheduler, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from training.sd15 import cast_module

        self.unet = cast_module(unet, dtype, device).eval()
        self.vae = cast_module(vae, dtype, device).eval()
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_folder(
        cls, folder: str | Path, scheduler: str = "dpmsolver++", device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DiffusionSampler:
        """Load `unet/`, `vae/` and `scheduler/` of a local diffusers SD1.5-layout folder."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder)
        for sub in ("unet", "vae", "scheduler"):
            if not (folder / sub).is_dir():
                raise FileNotFoundError(
                    f"{folder} is not a diffusers Stable Diffusion 1.5 folder: missing {sub}/ "
                    "(expected unet/, vae/, scheduler/ as in runwayml/stable-diffusion-v1-5)"
                )
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, torch_dtype=dtype)
        return cls(unet, vae, build_scheduler(scheduler, folder), device, dtype)

    @torch.no_grad()
    def sample(
        self, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance: float, resolution: int,
        generator: torch.Generator | None = None, controlnet=None, hint: torch.Tensor | None = None,
        pooled: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """cond, uncond: (B, 77, 768) -> images (B, 3, H, W) in 0..1 (float32, CPU).

        With a diffusers `controlnet` and its hint (B, 3, H, W) in [0, 1], the ControlNet's residuals are added to
        the U-Net on both the conditional and the unconditional half (diffusers' StableDiffusionControlNetPipeline
        with guess_mode off).

        An SDXL U-Net takes (B, 77, 2048) contexts and `pooled` = (cond_pooled, uncond_pooled), each (B, 1280) or
        (1, 1280), with the size conditioning of an uncropped `resolution` square (original = target = resolution,
        crop 0: diffusers' StableDiffusionXLPipeline and ComfyUI's CLIP Text Encode (SDXL) defaults)."""
        b = cond.shape[0]
        uncond = uncond.expand(b, -1, -1) if uncond.shape[0] == 1 else uncond
        context = torch.cat([uncond, cond]).to(self.device, self.dtype)  # uncond first, as the official code
        added = {}
        if pooled is not None:
            pooled_c, pooled_u = (p.expand(b, -1) for p in pooled)
            added["added_cond_kwargs"] = {"text_embeds": torch.cat([pooled_u, pooled_c]).to(self.device, self.dtype),
                                          "time_ids": square_time_ids(resolution, 2 * b).to(self.device)}
        side = resolution // self.vae_scale
        latents = torch.randn(
            (b, self.unet.config.in_channels, side, side), generator=generator, dtype=torch.float32
        ).to(self.device, self.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        residuals = {}
        if controlnet is not None:
            hint = torch.cat([hint, hint]).to(self.device, self.dtype)
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            if controlnet is not None:
                down, mid = controlnet(model_in, t, encoder_hidden_states=context, controlnet_cond=hint,
                                       return_dict=False)
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            eps = self.unet(model_in, t, encoder_hidden_states=context, **residuals, **added).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in 0..1 -> PIL RGB images."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
