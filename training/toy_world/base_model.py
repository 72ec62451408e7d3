"""The toy world's base text-to-image model: SD1.5's classes at a tiny size, saved in SD1.5's folder layout.

`unet/` UNet2DConditionModel (cross_attention_dim C = 256), `vae/` AutoencoderKL (x4 downsampling), `text_encoder/`
CLIPTextModel (outputs (B, 77, C) as SD1.5's CLIP ViT-L text tower outputs (B, 77, 768)), `tokenizer/` a CLIPTokenizer
with the toy vocabulary, `scheduler/` SD1.5's DDPM schedule. Anything that reads an SD1.5 diffusers folder (the trainer's
`sd15.path`, the evaluation sampler) reads this one.

The SDXL-shaped variant (`BaseModelConfig.toy_sdxl()`, `kind = "sdxl"`) is the same world in SDXL's layout and
conditioning, for KOSMOS-G for SDXL: two text encoders (`text_encoder/` a CLIPTextModel, `text_encoder_2/` a
CLIPTextModelWithProjection, as CLIP-L and OpenCLIP bigG) whose penultimate hidden states are concatenated into the
(B, 77, C) context (SDXL's 768 + 1280 = 2048), the second one's projected end-of-text state being the (B, P) pooled
vector (SDXL's 1280); a U-Net with SDXL's `text_time` added embedding (pooled vector + the 6 size values); and
`tokenizer_2/` padding with "!" as SDXL's does. The trainer's `load_sd15` and `base_kind` read it as SDXL.

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from training.cli import setup_logging
from training.sd15 import SD15, SD15_SCHEDULER, SDXL, SDXL_TIME_IDS, cast_module, sdxl_text_target, square_time_ids
from training.tiny_assets import SDXL_TOKENIZER_2_PAD, TOY_ALPHABET, write_clip_tokenizer

from .scenes import COLOURS, PAIR_PROB, PLACES, SHAPES, random_any_scene, render, vocabulary

log = logging.getLogger(__name__)

# The base model shipped with the pack (fp16, trained by `main` below with seed 0): the demo and the seed study use
# it as every KOSMOS-G training uses the same SD1.5.
SHIPPED_BASE = Path(__file__).resolve().parent / "assets" / "base"


@dataclass(frozen=True)
class BaseModelConfig:
    kind: str = SD15  # SD15: SD1.5's layout and conditioning; SDXL: SDXL's (module docstring)
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
    # SDXL only: the two text encoders' widths, whose penultimate states are concatenated into the `context_dim`-wide
    # context (SDXL's CLIP-L 768 + bigG 1280); the second's projection width is the pooled vector's (SDXL's 1280).
    # Unequal, as SDXL's are, so that a swapped concatenation order cannot go unnoticed.
    sdxl_text_widths: tuple[int, int] = (96, 160)
    sdxl_time_embed_dim: int = 32  # each of the 6 size values' sinusoidal embedding (SDXL's 256)
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

    def __post_init__(self) -> None:
        if self.kind not in (SD15, SDXL):
            raise ValueError(f"BaseModelConfig.kind = {self.kind!r}: expected {SD15!r} or {SDXL!r}")
        if self.kind == SDXL:
            if sum(self.sdxl_text_widths) != self.context_dim:
                raise ValueError(f"SDXL toy base: the text widths {self.sdxl_text_widths} must add up to context_dim "
                                 f"{self.context_dim} (the U-Net reads their concatenation)")
            if self.text_layers < 2:
                raise ValueError("SDXL toy base: text_layers must be >= 2, so that the penultimate hidden state SDXL "
                                 "reads is a transformer layer's output, not the embeddings")

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text vector the U-Net reads (the second encoder's projection); None for SD1.5."""
        return self.sdxl_text_widths[1] if self.kind == SDXL else None

    @property
    def latent_size(self) -> int:
        """Side of the VAE latent (and of the U-Net's finest cross-attention maps): each VAE level after the first
        halves the picture."""
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    @classmethod
    def toy(cls) -> BaseModelConfig:
        return cls()

    @classmethod
    def toy_sdxl(cls) -> BaseModelConfig:
        """The toy base in SDXL's shape: the same sizes and training, two text encoders of two layers each."""
        return cls(kind=SDXL, text_layers=2)

    @classmethod
    def test(cls) -> BaseModelConfig:
        """Seconds-scale smoke configuration for tests."""
        return cls(vae_channels=(8, 8), unet_channels=(16, 32), unet_heads=2, text_layers=1, text_ffn=64,
                   vae_steps=3, text_steps=3, text_batch=4, unet_steps=3, batch_size=4)

    @classmethod
    def test_sdxl(cls) -> BaseModelConfig:
        """`test` in SDXL's shape."""
        return replace(cls.test(), kind=SDXL, text_layers=2)


PRESETS = {"toy": BaseModelConfig.toy, "toy_sdxl": BaseModelConfig.toy_sdxl, "test": BaseModelConfig.test,
           "test_sdxl": BaseModelConfig.test_sdxl}


def build_components(cfg: BaseModelConfig, tokenizer, tokenizer_2=None):
    """Fresh (unet, vae, BaseText) with random weights; `tokenizer_2` (SDXL's second tokenizer) for an SDXL base."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    groups = min(16, cfg.vae_channels[0])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=groups, sample_size=cfg.image_size,
    )
    # SDXL: pooled text + 6 size values, each through a `sdxl_time_embed_dim` sinusoidal embedding, added to the
    # timestep embedding (SDXL's projection_class_embeddings_input_dim 1280 + 6 x 256 = 2816); linear projections
    sdxl = {} if cfg.pooled_dim is None else {
        "addition_embed_type": "text_time", "addition_time_embed_dim": cfg.sdxl_time_embed_dim,
        "projection_class_embeddings_input_dim": cfg.pooled_dim + SDXL_TIME_IDS * cfg.sdxl_time_embed_dim,
        "use_linear_projection": True}
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=cfg.unet_channels, layers_per_block=1, cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.unet_heads, norm_num_groups=min(32, cfg.unet_channels[0]), **sdxl,
    )

    def text_config(tok, width: int, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tok), hidden_size=width, intermediate_size=cfg.text_ffn, num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)

    if cfg.kind == SD15:
        text = BaseText(tokenizer, CLIPTextModel(text_config(tokenizer, cfg.context_dim, projection_dim=cfg.context_dim)))
    else:  # CLIP-L's quick_gelu and bigG's gelu, as SDXL's two encoders
        first, second = cfg.sdxl_text_widths
        text = BaseText(tokenizer, CLIPTextModel(text_config(tokenizer, first, hidden_act="quick_gelu")),
                        tokenizer_2, CLIPTextModelWithProjection(text_config(tokenizer_2, second, hidden_act="gelu",
                                                                             projection_dim=cfg.pooled_dim)))
    return unet, vae, text


class BaseText:
    """The base model's text side, encoding captions as its pipeline does: SD1.5's CLIP text encoder (its last hidden
    state, `encode_text`), or SDXL's two encoders (`training.sd15.sdxl_text_target`, the rule stage 2 trains to:
    penultimate states concatenated into the context, the second encoder's projected end-of-text state as pooled)."""

    def __init__(self, tokenizer, text_encoder, tokenizer_2=None, text_encoder_2=None):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2

    @property
    def encoders(self) -> list[torch.nn.Module]:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Captions -> (context (B, 77, C), pooled (B, P) or None for SD1.5)."""
        if self.text_encoder_2 is None:
            return encode_text(self.tokenizer, self.text_encoder, captions), None
        return sdxl_text_target(self.text_encoder, self.text_encoder_2, self.tokenizer, self.tokenizer_2, captions,
                                self.text_encoder.device)


def unet_conditioning(context: torch.Tensor, pooled: torch.Tensor | None, resolution: int) -> dict:
    """The U-Net's keyword arguments for a (B, 77, C) context: an SDXL U-Net also takes the (B, P) pooled vector and
    the size conditioning of the toy world's uncropped square pictures."""
    kwargs = {"encoder_hidden_states": context}
    if pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": square_time_ids(resolution, len(pooled))}
    return kwargs


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


def pretrain_text_encoder(text: BaseText, cfg: BaseModelConfig, rng: random.Random, world: World = TOY_WORLD) -> float:
    """Teach the toy CLIP what a caption says at every one of its 77 output positions; returns the final loss.

    Linear heads on each (B, 77, C) position predict what the world's captions state (the toy world: place, subject
    count, each subject's colour word and shape word). The causal mask means positions before a word cannot know it,
    so the loss does not reach zero. An SDXL base's pooled vector (B, P) gets its own heads, as CLIP trains its
    pooled output: it reads the whole caption."""
    heads = torch.nn.ModuleList([torch.nn.Linear(cfg.context_dim, n) for n in world.head_sizes])
    pooled_heads = torch.nn.ModuleList([torch.nn.Linear(cfg.pooled_dim, n) for n in world.head_sizes]
                                       if cfg.pooled_dim is not None else [])
    params = [p for e in text.encoders for p in e.parameters()] + [*heads.parameters(), *pooled_heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
    for encoder in text.encoders:
        encoder.train().requires_grad_(True)
    loss = torch.tensor(float("nan"))
    for step in range(cfg.text_steps):
        captions, labels = world.text_batch(rng, cfg)
        hidden, pooled = text.encode(captions)  # (B, 77, C), (B, P) or None
        positions = hidden.shape[1]
        loss = sum(F.cross_entropy(head(hidden).flatten(0, 1), labels[:, i].repeat_interleave(positions))
                   for i, head in enumerate(heads))
        if pooled is not None:
            loss = loss + sum(F.cross_entropy(head(pooled), labels[:, i]) for i, head in enumerate(pooled_heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.text_steps - 1:
            log.info("text encoder step %d/%d loss %.4f", step, cfg.text_steps, loss.item())
    for encoder in text.encoders:
        encoder.eval().requires_grad_(False)
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


def _train_unet(unet, vae, scheduler, condition, cfg: BaseModelConfig, rng: random.Random, world: World) -> float:
    """epsilon-prediction with min-SNR-gamma weights w(t) = min(SNR(t), gamma) / SNR(t); keeps an EMA of the
    weights and loads it into `unet` at the end. `condition(captions)` gives the U-Net's conditioning keyword
    arguments (`unet_conditioning`). Returns the mean weighted loss of the last 100 steps."""
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
        pred = unet(scheduler.add_noise(latents, noise, t), t, **condition(captions)).sample
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
    """Train and save a toy world's base model as an SD1.5-layout diffusers folder (SDXL's layout for an SDXL `cfg`;
    weights in `save_dtype`)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(world.vocabulary(), out / "tokenizer", cfg.max_length))
    tokenizer_2 = None
    if cfg.kind == SDXL:
        tokenizer_2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(
            world.vocabulary(), out / "tokenizer_2", cfg.max_length, alphabet=TOY_ALPHABET + SDXL_TOKENIZER_2_PAD,
            pad_token=SDXL_TOKENIZER_2_PAD))
    unet, vae, text = build_components(cfg, tokenizer, tokenizer_2)
    t0 = time.time()
    seconds = {}
    vae_loss = _train_vae(vae, cfg, rng, world)
    seconds["vae"] = time.time() - t0
    text_loss = pretrain_text_encoder(text, cfg, rng, world)
    seconds["text_encoder"] = time.time() - t0 - seconds["vae"]

    # a few thousand distinct captions, each encoded once: caption -> (context (77, C), pooled (P,) or None)
    text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def condition(captions: list[str]) -> dict:
        missing = sorted({c for c in captions if c not in text_cache})
        if missing:
            with torch.no_grad():
                context, pooled = text.encode(missing)
            for i, c in enumerate(missing):
                text_cache[c] = (context[i], None if pooled is None else pooled[i])
        rows = [text_cache[c] for c in captions]
        pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows])
        return unet_conditioning(torch.stack([r[0] for r in rows]), pooled, cfg.image_size)

    scheduler = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    unet_loss = _train_unet(unet, vae, scheduler, condition, cfg, rng, world)
    seconds["unet"] = time.time() - t0 - seconds["vae"] - seconds["text_encoder"]

    encoders = zip(text.encoders, ("text_encoder", "text_encoder_2"), strict=False)
    for module, sub in ((unet, "unet"), (vae, "vae"), *encoders):
        cast_module(module, save_dtype).save_pretrained(out / sub)
    scheduler.save_pretrained(out / "scheduler")
    cfg_path = out / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(cfg_path.read_text()) | {"set_alpha_to_one": False, "skip_prk_steps": True}
    cfg_path.write_text(json.dumps(sched_cfg, indent=2))
    (out / "model_index.json").write_text(json.dumps(_model_index(cfg), indent=2))
    (out / "toy_base_model.json").write_text(json.dumps({
        "config": asdict(cfg), "seed": seed, "vae_final_loss": vae_loss, "text_encoder_final_loss": text_loss,
        "unet_final_loss": unet_loss, "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }, indent=2))
    log.info("toy base model saved to %s (%.0fs)", out, time.time() - t0)
    return out


def _model_index(cfg: BaseModelConfig) -> dict:
    """model_index.json of the saved folder: SD1.5's StableDiffusionPipeline, or SDXL's pipeline with its second
    text encoder and tokenizer."""
    common = {"_diffusers_version": "0.42.1", "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"]}
    if cfg.kind == SDXL:
        # False: the toy U-Net learnt its unconditional case from the encoded empty caption, not from zeros
        return {"_class_name": "StableDiffusionXLPipeline", **common, "force_zeros_for_empty_prompt": False,
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer_2": ["transformers", "CLIPTokenizer"]}
    return {"_class_name": "StableDiffusionPipeline", **common, "safety_checker": [None, None],
            "feature_extractor": [None, None], "requires_safety_checker": False}


def load_base_text(folder: str | Path) -> BaseText:
    """The text side of a saved base model (SD1.5's or SDXL's, from the folder's files), for text-only generation
    with the base model itself and for measuring stage 2's alignment."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)

    def load(cls, sub: str):
        return cls.from_pretrained(folder / sub, local_files_only=True, dtype=torch.float32).eval()

    text = BaseText(CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
                    load(CLIPTextModel, "text_encoder"))
    if (folder / "text_encoder_2").is_dir():
        text.tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
        text.text_encoder_2 = load(CLIPTextModelWithProjection, "text_encoder_2")
    return text


def load_text_side(folder: str | Path):
    """(tokenizer, text_encoder) of a saved SD1.5-layout base model (`load_base_text` for either layout)."""
    text = load_base_text(folder)
    return text.tokenizer, text.text_encoder


def main(argv: list[str] | None = None) -> None:
    """python -m training.toy_world.base_model --out training/toy_world/assets/base --fp16  (the shipped copy)"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.toy_world.base_model",
                                     description="Train the toy world's SD1.5-shaped base model (VAE, CLIP-shaped text "
                                                 "encoder, U-Net; --preset toy_sdxl: SDXL-shaped, two text encoders) "
                                                 "and save it as a diffusers folder.\n\n" + main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (a diffusers SD1.5- or SDXL-layout folder)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy",
                        help="model and training size: toy (the toy world's), toy_sdxl (the same in SDXL's shape) or "
                             "test / test_sdxl (seconds) (default toy)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and the weights (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    setup_logging()
    train_base_model(args.out, PRESETS[args.preset](), args.seed, args.threads or None,
                     torch.float16 if args.fp16 else torch.float32)


if __name__ == "__main__":
    main()
