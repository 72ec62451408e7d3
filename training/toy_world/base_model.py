"""The toy world's base text-to-image model: SD1.5's classes at a tiny size, saved in SD1.5's folder layout.

`unet/` UNet2DConditionModel (cross_attention_dim C = 256), `vae/` AutoencoderKL (x4 downsampling), `text_encoder/`
CLIPTextModel (outputs (B, 77, C) as SD1.5's CLIP ViT-L text tower outputs (B, 77, 768)), `tokenizer/` a CLIPTokenizer
with the toy vocabulary, `scheduler/` SD1.5's DDPM schedule. Anything that reads an SD1.5 diffusers folder (the trainer's
`sd15.path`, the evaluation sampler) reads this one.

Training, in `train_base_model`, in three steps that mirror how SD1.5 was made:
1. The VAE (reconstruction + a small KL term); its scaling factor is then set to 1 / std of the latents, as SD's
   0.18215 was chosen. It compresses x4 (32 px -> 8 x 8 x 8): the first toy base compressed x8 (4 x 4 x 16), which kept
   one 18 px subject but not two 12 px ones side by side (see `BaseModelConfig.vae_channels`).
2. The text encoder, pretrained and then frozen, as CLIP is. CLIP learned its text features from images; here a
   cheaper stand-in objective teaches it what the captions say: linear heads on *every* output position predict the
   caption's place, how many subjects it names, and each subject's colour word and shape word. A random frozen encoder is no stand-in for CLIP: measured, only 4 %
   of its output varied between captions (padding positions carry almost nothing) and a U-Net trained on it ignored
   the colour words (colour accuracy at chance).
3. The U-Net on captions with the epsilon-prediction loss (SD1.5's objective), 10 % empty captions for
   classifier-free guidance, min-SNR-5 loss weighting (Hang et al. 2023, converges several times faster on a short
   budget) and an EMA of the weights, which is what gets saved.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from training.cli import setup_logging
from training.sd15 import SD15_SCHEDULER, cast_module
from training.tiny_assets import write_clip_tokenizer

from .scenes import COLOURS, PAIR_PROB, PLACES, SHAPES, random_any_scene, render, vocabulary

log = logging.getLogger(__name__)

# The base model shipped with the pack (fp16, trained by `main` below with seed 0): the demo and the seed study use
# it as every KOSMOS-G training uses the same SD1.5.
SHIPPED_BASE = Path(__file__).resolve().parent / "assets" / "base"


@dataclass(frozen=True)
class BaseModelConfig:
    image_size: int = 32
    # x4 downsampling: 32 px scenes -> 8 x 8 latents, so that each 12 px subject of a two-subject scene spans about
    # 3 x 3 latent cells. The earlier x8 base (4 x 4 x 16 latents) drew two told subjects exactly right only 0.233 of
    # the time (shape 0.36): about 1.5 cells per subject did not hold a shape.
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8
    unet_channels: tuple[int, ...] = (64, 128)
    unet_heads: int = 4
    text_layers: int = 1
    text_heads: int = 4
    text_ffn: int = 256
    # The cross-attention context width, which the KOSMOS-G AlignerNet must output. SD1.5's is 768; at 768 the
    # AlignerNet's linears were two thirds of a stage-2/3 step at this scale (profiled), so the toy world uses 256.
    context_dim: int = 256
    max_length: int = 77
    # training
    vae_steps: int = 800
    vae_lr: float = 1e-3
    text_steps: int = 150  # the loss plateaus by step 120 (two-subject captions have six labels)
    text_lr: float = 1e-3
    text_batch: int = 32
    unet_steps: int = 3000
    unet_lr: float = 2e-3
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    batch_size: int = 24
    describe_prob: float = 0.5  # captions that name the subject's colour and shape words
    uncond_prob: float = 0.1
    pair_prob: float = PAIR_PROB  # two-subject scenes ("a toy next to a block ...")

    @property
    def latent_size(self) -> int:
        """Side of the VAE latent (and of the U-Net's finest cross-attention maps): each VAE level after the first
        halves the picture."""
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    @classmethod
    def toy(cls) -> BaseModelConfig:
        return cls()

    @classmethod
    def test(cls) -> BaseModelConfig:
        """Seconds-scale smoke configuration for tests."""
        return cls(vae_channels=(8, 8), unet_channels=(16, 32), unet_heads=2, text_layers=1, text_ffn=64,
                   vae_steps=3, text_steps=3, text_batch=4, unet_steps=3, batch_size=4)


PRESETS = {"toy": BaseModelConfig.toy, "test": BaseModelConfig.test}


def build_components(cfg: BaseModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """Fresh (unet, vae, text_encoder) with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    groups = min(16, cfg.vae_channels[0])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=groups, sample_size=cfg.image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=cfg.unet_channels, layers_per_block=1, cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.unet_heads, norm_num_groups=min(32, cfg.unet_channels[0]),
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.context_dim, intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, projection_dim=cfg.context_dim,
    ))
    return unet, vae, text


class World(Protocol):
    """What a toy world gives the base-model training: its words, its captioned pictures and what its captions say."""

    def vocabulary(self) -> list[str]: ...

    def image_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[torch.Tensor, list[str]]:
        """(B, 3, S, S) pictures in [-1, 1] and their captions ("" on `uncond_prob`)."""

    def text_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[list[str], torch.Tensor]:
        """`text_batch` captions and their (B, K) class ids, one per head of `head_sizes`."""

    @property
    def head_sizes(self) -> tuple[int, ...]: ...


class ToyWorld:
    """The subject world of scenes.py: one or two subjects on a place."""

    def vocabulary(self) -> list[str]:
        return vocabulary()

    def image_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[torch.Tensor, list[str]]:
        """Captions name the attribute words on `describe_prob`, are empty on `uncond_prob`."""
        images, captions = [], []
        for _ in range(cfg.batch_size):
            scene = random_any_scene(rng, cfg.pair_prob)
            images.append(np.asarray(render(scene, cfg.image_size), np.float32) / 127.5 - 1.0)
            r = rng.random()
            captions.append("" if r < cfg.uncond_prob else scene.caption(describe=rng.random() < cfg.describe_prob))
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), captions

    def text_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[list[str], torch.Tensor]:
        scenes = [random_any_scene(rng, cfg.pair_prob) for _ in range(cfg.text_batch)]
        described = [rng.random() < cfg.describe_prob for _ in scenes]
        labels = torch.tensor([_attribute_labels(s, d) for s, d in zip(scenes, described, strict=True)])  # (B, 6)
        return [s.caption(d) for s, d in zip(scenes, described, strict=True)], labels

    @property
    def head_sizes(self) -> tuple[int, ...]:
        return (len(PLACES), 2, *(len(COLOURS) + 1, len(SHAPES) + 1) * 2)


TOY_WORLD = ToyWorld()


def encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """SD1.5's way: pad to 77 with the tokenizer, last hidden state (after the final LayerNorm) -> (B, 77, C)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def _attribute_labels(scene, described: bool) -> tuple[int, ...]:
    """(place, subject count - 1, first colour word, first shape word, second colour word, second shape word) class
    ids of a caption; 0 = the caption names no such colour / shape."""
    subjects = scene.subjects
    words = []
    for k in range(2):
        named = described and k < len(subjects)
        words += [list(COLOURS).index(subjects[k].colour) + 1 if named else 0,
                  list(SHAPES).index(subjects[k].shape) + 1 if named else 0]
    return (list(PLACES).index(scene.place), len(subjects) - 1, *words)


def pretrain_text_encoder(tokenizer, text_encoder, cfg: BaseModelConfig, rng: random.Random,
                          world: World = TOY_WORLD) -> float:
    """Teach the toy CLIP what a caption says at every one of its 77 output positions; returns the final loss.

    Linear heads on each (B, 77, C) position predict what the world's captions state (the toy world: place, subject
    count, each subject's colour word and shape word). The causal mask means positions before a word cannot know it,
    so the loss does not reach zero."""
    heads = torch.nn.ModuleList([torch.nn.Linear(cfg.context_dim, n) for n in world.head_sizes])
    opt = torch.optim.AdamW([*text_encoder.parameters(), *heads.parameters()], lr=cfg.text_lr, weight_decay=0.0)
    text_encoder.train().requires_grad_(True)
    loss = torch.tensor(float("nan"))
    for step in range(cfg.text_steps):
        captions, labels = world.text_batch(rng, cfg)
        hidden = encode_text(tokenizer, text_encoder, captions)
        positions = hidden.shape[1]
        loss = sum(F.cross_entropy(head(hidden).flatten(0, 1), labels[:, i].repeat_interleave(positions))
                   for i, head in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.text_steps - 1:
            log.info("text encoder step %d/%d loss %.4f", step, cfg.text_steps, loss.item())
    text_encoder.eval().requires_grad_(False)
    return float(loss.item())


def _train_vae(vae, cfg: BaseModelConfig, rng: random.Random, world: World) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    loss = torch.tensor(float("nan"))
    for step in range(cfg.vae_steps):
        x, _ = world.image_batch(rng, cfg)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            log.info("vae step %d/%d loss %.5f", step, cfg.vae_steps, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(world.image_batch(rng, cfg)[0]).latent_dist.mode() for _ in range(4)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return float(loss.item())


def _train_unet(unet, vae, scheduler, embed, cfg: BaseModelConfig, rng: random.Random, world: World) -> float:
    """epsilon-prediction with min-SNR-gamma weights w(t) = min(SNR(t), gamma) / SNR(t); keeps an EMA of the
    weights and loads it into `unet` at the end. Returns the mean weighted loss of the last 100 steps."""
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    ema = [p.detach().clone() for p in params]
    alphas = scheduler.alphas_cumprod
    unet.train()
    losses: list[float] = []
    for step in range(cfg.unet_steps):
        x, captions = world.image_batch(rng, cfg)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=embed(captions)).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # (B,)
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short warm-up so early weights fade quickly
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.item())
        if step % 250 == 0 or step == cfg.unet_steps - 1:
            log.info("unet step %d/%d loss %.4f", step, cfg.unet_steps, float(np.mean(losses[-100:])))
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    unet.eval()
    return float(np.mean(losses[-100:])) if losses else float("nan")


def train_base_model(out_dir: str | Path, cfg: BaseModelConfig = BaseModelConfig(), seed: int = 0,
                     threads: int | None = None, save_dtype: torch.dtype = torch.float32,
                     world: World = TOY_WORLD) -> Path:
    """Train and save a toy world's base model as an SD1.5-layout diffusers folder (weights in `save_dtype`)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(world.vocabulary(), out / "tokenizer", cfg.max_length))
    unet, vae, text = build_components(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                                       tokenizer.eos_token_id)
    t0 = time.time()
    seconds = {}
    vae_loss = _train_vae(vae, cfg, rng, world)
    seconds["vae"] = time.time() - t0
    text_loss = pretrain_text_encoder(tokenizer, text, cfg, rng, world)
    seconds["text_encoder"] = time.time() - t0 - seconds["vae"]

    text_cache: dict[str, torch.Tensor] = {}  # a few thousand distinct captions, each encoded once

    def embed(captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in text_cache})
        if missing:
            with torch.no_grad():
                for c, e in zip(missing, encode_text(tokenizer, text, missing), strict=True):
                    text_cache[c] = e
        return torch.stack([text_cache[c] for c in captions])

    scheduler = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    unet_loss = _train_unet(unet, vae, scheduler, embed, cfg, rng, world)
    seconds["unet"] = time.time() - t0 - seconds["vae"] - seconds["text_encoder"]

    for module, sub in ((unet, "unet"), (vae, "vae"), (text, "text_encoder")):
        cast_module(module, save_dtype).save_pretrained(out / sub)
    scheduler.save_pretrained(out / "scheduler")
    cfg_path = out / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(cfg_path.read_text()) | {"set_alpha_to_one": False, "skip_prk_steps": True}
    cfg_path.write_text(json.dumps(sched_cfg, indent=2))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }, indent=2))
    (out / "toy_base_model.json").write_text(json.dumps({
        "config": asdict(cfg), "seed": seed, "vae_final_loss": vae_loss, "text_encoder_final_loss": text_loss,
        "unet_final_loss": unet_loss, "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }, indent=2))
    log.info("toy base model saved to %s (%.0fs)", out, time.time() - t0)
    return out


def load_text_side(folder: str | Path):
    """(tokenizer, text_encoder) of a saved base model, for text-only generation with the base model itself."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    return (CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
            CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, dtype=torch.float32).eval())


def main(argv: list[str] | None = None) -> None:
    """python -m training.toy_world.base_model --out training/toy_world/assets/base --fp16  (the shipped copy)"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.toy_world.base_model",
                                     description="Train the toy world's SD1.5-shaped base model (VAE, CLIP-shaped text "
                                                 "encoder, U-Net) and save it as a diffusers folder.\n\n" + main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (a diffusers SD1.5-layout folder)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy",
                        help="model and training size: toy (the toy world's) or test (seconds) (default toy)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and the weights (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    setup_logging()
    train_base_model(args.out, PRESETS[args.preset](), args.seed, args.threads or None,
                     torch.float16 if args.fp16 else torch.float32)


if __name__ == "__main__":
    main()
