"""Stage 3, compositional instruction tuning ("score distillation"; official `kosmos-g/unilm/models/diffusion.py:64-84`,
`kosmos-g/unilm/models/kosmosg.py:311-319`).

    c        = M(MLLM(tokens, images))                      (B, 77, 768), 10 % replaced by null = M(MLLM([<s>]))
    latents  = VAE.encode(target).sample() * 0.18215        frozen; with `[sd15] cache_outputs` the posterior (mean,
                                                            std) comes from the cache and eps is still drawn per step
    x_t      = DDPM.add_noise(latents, eps, t),  t ~ U{0..999}
    loss     = mean_b mean_{C,H,W} (UNet(x_t, t, c) - eps)^2   frozen U-Net, gradient flows through it into c

Trainable: MLLM, connector, AlignerNet M, last ViT block + ln_post. Data: compositional : editing : captions shards
(the loader applies the entity-word, cut-out and caption-drop rules). When `[semantic]` has a non-zero weight the
`semantic_supervision.SemanticSupervision` (beside this file) adds its terms.

Against an SDXL base (not in the official code) c is the (B, 77, 2048) context and the frozen SDXL U-Net also reads
SDXL's added conditions, as diffusers' SDXL training does:

    pooled   = KosmosG.pooled(c)                            (B, 1280), of the condition after the null draw, so a
                                                            dropped sample gets pooled(null): inference's negative
    time_ids = batch["target_geometry"]                     (B, 6): original h, w, crop top, left, target h, w of the
                                                            target image (training/data/transforms.target_geometry)
    loss     = mean_b mean (UNet(x_t, t, c, text_embeds=pooled, time_ids=time_ids) - eps)^2
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..distributed import is_fsdp, unwrap
from ..sd15 import memory_format_of, sample_posterior, vae_posterior
from .base import (
    KosmosStage,
    StageModule,
    cache_identity,
    check_condition_width,
    last_vit_block_prefixes,
    register,
    to_device,
)

log = logging.getLogger(__name__)


class InstructionTuning(StageModule):
    stage_name = "stage3"

    def __init__(self, kosmos, cond_dropout: float):
        super().__init__(kosmos)
        self.cond_dropout = cond_dropout
        self._posterior_layout: torch.memory_format | None = None

    def posterior_layout(self, vae, target: Tensor) -> torch.memory_format:
        """The memory layout of the VAE's posterior for batches like `target` here (sd15.memory_format_of): found by
        encoding the first cached batch once (no RNG is drawn), so cached latents are laid out, and then noised,
        exactly as encoded ones."""
        if self._posterior_layout is None:
            self._posterior_layout = memory_format_of(vae_posterior(vae, target)[0])
        return self._posterior_layout

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        batch = to_device(batch, self.device)
        unet, vae, scheduler = self.frozen["unet"], self.frozen["vae"], self.frozen["noise_scheduler"]
        tokens, image_mask, pixels, target = batch["tokens"], batch["image_mask"], batch["pixels"], batch["target"]
        B = tokens.shape[0]
        semantic = self.frozen.get("semantic")
        if semantic is not None:
            semantic.reset()
        embeds = self.kosmos.encode_images(pixels) if pixels.shape[0] else None  # (N, 64, D)
        cond = self.kosmos.align(self.kosmos.mllm_forward(tokens, embeds, image_mask), tokens)  # (B, 77, 768)
        null_tokens = tokens.new_zeros(1, 1)  # [<s>]
        null = self.kosmos.align(self.kosmos.mllm_forward(null_tokens), null_tokens)  # (1, 77, 768)
        drop = torch.rand(B, device=cond.device) < self.cond_dropout
        cond = torch.where(drop[:, None, None], null.expand_as(cond), cond)
        added = {}
        if self.kosmos.config.pooled_dim is not None:  # SDXL: the pooled vector and size conditioning
            added["added_cond_kwargs"] = {"text_embeds": self.kosmos.pooled(cond).to(unet.dtype),  # (B, 1280)
                                          "time_ids": batch["target_geometry"].float()}  # (B, 6), exact in fp32

        with torch.no_grad():
            if "latent_mean" in batch:  # the target's posterior from the frozen-output cache, each (B, 4, R/8, R/8)
                layout = self.posterior_layout(vae, target)
                mean, std = (batch[k].contiguous(memory_format=layout) for k in ("latent_mean", "latent_std"))
            else:
                mean, std = vae_posterior(vae, target)
            # eps drawn here, every step, exactly as latent_dist.sample() draws it
            latents = sample_posterior(mean, std) * vae.config.scaling_factor  # (B, 4, R/8, R/8)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (B,), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        noise_pred = unet(noisy, timesteps, encoder_hidden_states=cond.to(unet.dtype), **added).sample
        diffusion = (noise_pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3)).mean()
        loss = diffusion
        metrics = {"loss/diffusion": diffusion.detach(), "cond/null_share": drop.float().mean()}
        if semantic is not None:
            batch["cond_dropped"] = drop  # (B,) grounding skips samples whose condition was nulled
            terms = semantic.losses(batch=batch, noise_pred=noise_pred, noisy_latents=noisy, timesteps=timesteps,
                                    noise_scheduler=scheduler, vae=vae)
            for name, value in terms.items():
                loss = loss + value
                metrics[f"loss/{name}"] = value.detach()
        return loss, metrics

    @torch.no_grad()
    def sample_conditions(self, prompts: list) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Prompts -> (cond, uncond, cond_pooled, uncond_pooled) in eval mode (no dropout): cond and uncond each
        (N, 77, 768), pooled None; SDXL (N, 77, 2048) and pooled (N, 1280) each, the null condition's pooled vector
        being the pooled head of the null context, as the nodes make the negative."""
        was_training = self.training
        self.eval()
        try:
            cond = self.kosmos.condition(self.kosmos.collate(prompts))
            null = self.kosmos.null_condition()  # (1, 77, C)
            uncond = null.expand_as(cond)
            pooled = uncond_pooled = None
            if self.kosmos.config.pooled_dim is not None:
                pooled, uncond_pooled = self.kosmos.pooled(cond), self.kosmos.pooled(null).expand(cond.shape[0], -1)
        finally:
            self.train(was_training)
        return cond, uncond, pooled, uncond_pooled


def _prompts(items) -> list:
    """[sample] prompts: strings, or tables {text = "<i> in the snow", images = ["dog.jpg"]}."""
    from PIL import Image

    from kosmos_g_core.prompt import InterleavedPrompt

    out = []
    for item in items:
        if isinstance(item, str):
            out.append(InterleavedPrompt.from_text(item))
        else:
            images = [Image.open(p).convert("RGB") for p in item.get("images", [])]
            out.append(InterleavedPrompt.from_text(item["text"], images))
    return out


@register("stage3")
class Stage3(KosmosStage):
    default_trainable = ("gpt_model.", "img_connector.", "aligner.")
    fsdp_forward_methods = ("sample_conditions",)
    aligner_mode = "encoder"
    sd15_parts = ("unet", "vae")
    caches_frozen_outputs = True     # [sd15] cache_outputs: see frozen_cache below

    def trainable_prefixes(self, cfg, kosmos) -> list[str]:
        return list(cfg.model.trainable) or [*self.default_trainable, *last_vit_block_prefixes(kosmos)]

    def check_config(self, cfg) -> None:
        from .semantic_supervision import SemanticConfig

        super().check_config(cfg)
        SemanticConfig.from_dict(cfg.semantic)

    def assemble(self, cfg, kosmos, parts) -> InstructionTuning:
        from ..sd15 import unet_pooled_dim
        from .semantic_supervision import SemanticConfig

        check_condition_width(kosmos, parts.unet.config.cross_attention_dim, "the U-Net's cross-attention",
                              cfg.sd15.path, pooled=unet_pooled_dim(parts.unet.config))
        module = InstructionTuning(kosmos, cfg.model.cond_dropout)
        module.add_frozen("unet", parts.unet)
        module.add_frozen("vae", parts.vae)
        module.add_frozen("noise_scheduler", parts.noise_scheduler)
        if SemanticConfig.from_dict(cfg.semantic).enabled:
            from .semantic_supervision import SemanticSupervision

            semantic = SemanticSupervision(dict(cfg.semantic), parts.unet)
            # Entity token positions are MLLM positions: the hook maps them to the U-Net's 77 context slots
            # through AlignerNet M's attention.
            semantic.attach_aligner(kosmos.aligner)
            module.add_frozen("semantic", semantic)
            log.info("semantic supervision enabled: %s", cfg.semantic)
        return self.finish_model(cfg, module)

    def set_activation_checkpointing(self, model, cfg, enabled: bool) -> None:
        super().set_activation_checkpointing(model, cfg, enabled)
        unet = unwrap(model).frozen["unet"]
        if enabled and cfg.sd15.gradient_checkpointing:  # the frozen U-Net too, when [sd15] asks for it
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()

    def target_size(self, cfg) -> int:
        return cfg.sd15.resolution

    def frozen_cache(self, cfg, module: StageModule):
        if not cfg.sd15.cache_outputs:
            return None
        from training.data.frozen_cache import FrozenCache

        return FrozenCache(cache_identity(cfg, module.frozen["vae"]))

    def sample(self, model, step: int, writer, cfg) -> None:
        if not cfg.sample.prompts:
            return
        module = unwrap(model)
        # FSDP: every rank runs the (registered) conditioning method, since it gathers parameters.
        caller = model if is_fsdp(model) else module
        cond, uncond, pooled, uncond_pooled = caller.sample_conditions(_prompts(cfg.sample.prompts))
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        from ..evaluation.sampler import DiffusionSampler, scheduler_from_config

        unet, vae = module.frozen["unet"], module.frozen["vae"]
        scheduler = scheduler_from_config("dpmsolver++", module.frozen["noise_scheduler"].config)
        sampler = DiffusionSampler(unet, vae, scheduler, cond.device, unet.dtype)
        images = sampler.sample(cond, uncond, steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                                resolution=cfg.sample.resolution or cfg.sd15.resolution,
                                # its own generator: the training RNG streams stay untouched
                                generator=torch.Generator(device="cpu").manual_seed(cfg.sample.seed),
                                pooled=None if pooled is None else (pooled, uncond_pooled))
        writer.images("samples", images, step)
        folder = Path(cfg.run.out_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for i, img in enumerate(images):
            array = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            Image.fromarray(array).save(folder / f"step_{step:08d}_{i}.png")
        log.info("wrote %d sample images to %s", len(images), folder)
