"""The frozen Stable Diffusion 1.5 parts the trainer needs, loaded offline from the user's own files.

Two layouts are accepted for `[sd15] path`:
* a diffusers folder: `unet/`, `vae/`, `scheduler/`, `text_encoder/` (config.json + weights) and `tokenizer/`
  (vocab.json + merges.txt), e.g. a saved `StableDiffusionPipeline`;
* a single-file SD1.5 checkpoint (`.safetensors`, or `.ckpt` read with weights_only): the U-Net and VAE go through
  diffusers' `from_single_file` with the SD1.5 `v1-inference.yaml` values given here as a dict, so nothing is
  fetched; the CLIP text encoder is built from the `cond_stage_model.transformer.text_model.*` tensors with a config
  inferred from their shapes. A single file holds no CLIP BPE vocabulary, so `[sd15] tokenizer` must then name a
  folder with vocab.json + merges.txt (ComfyUI ships one in `comfy/sd1_tokenizer/`) or open_clip's
  `bpe_simple_vocab_16e6.txt.gz`.

Nothing here touches a model hub: every `from_pretrained` call is given a local folder and local_files_only=True.
Tiny random SD1.5-like folders for tests and smoke runs are written by training/tiny_assets.py.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CLIP_PREFIX = "cond_stage_model.transformer.text_model."
CLIP_MAX_LENGTH = 77

# Values of Stable Diffusion's configs/stable-diffusion/v1-inference.yaml that diffusers' single-file conversion reads.
SD15_ORIGINAL_CONFIG = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "timesteps": 1000,
            "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
            "cond_stage_trainable": False, "conditioning_key": "crossattn", "scale_factor": 0.18215,
            "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                           "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                           "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
                           "context_dim": 768, "use_checkpoint": True, "legacy": False},
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {"embed_dim": 4,
                           "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                        "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                        "attn_resolutions": [], "dropout": 0.0}},
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        },
    },
}

# SD1.5's scheduler_config.json (DDPM training schedule).
SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1, "prediction_type": "epsilon"}

# SD1.5's text_encoder/config.json (the text tower of CLIP ViT-L/14), for building it without its folder.
SD15_TEXT_ENCODER = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}


@dataclass
class SD15Parts:
    """Whatever of SD1.5 a stage asked for; all modules frozen (requires_grad False) and in eval mode."""
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    unet: nn.Module | None = None
    vae: nn.Module | None = None
    noise_scheduler: object | None = None


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() or any(
        (path / sub).is_dir() for sub in ("unet", "vae", "text_encoder"))


def _read_single_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd)


def cast_module(module: nn.Module, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """`module.to(device, dtype)`, casting only when a parameter's dtype differs.

    diffusers' `ModelMixin.to` warns "should be kept in float32: []" on every call that names a dtype, even when the
    model keeps no module in float32 (the empty list); such models go through `nn.Module.to`, which does the same
    cast silently. A model that does keep modules in float32 still gets diffusers' own `to` (and its warning)."""
    to = module.to if getattr(module, "_keep_in_fp32_modules", None) else nn.Module.to.__get__(module)
    if device is not None:
        module = to(device)
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        module = to(dtype)
    return module


def _freeze(module: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return cast_module(module, dtype, device)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected {what}. [sd15] path must be a diffusers SD1.5 folder "
                                "(unet/, vae/, scheduler/, text_encoder/, tokenizer/) or a single-file SD1.5 checkpoint")
    return path


# -- CLIP tokenizer --------------------------------------------------------------------------------------------------
def bytes_to_unicode() -> list[str]:
    """The byte -> printable-character table of GPT-2/CLIP byte-level BPE, in byte order of the vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_vocab_from_bpe_gz(gz_path: Path, out_dir: Path) -> Path:
    """Write vocab.json + merges.txt from open_clip's `bpe_simple_vocab_16e6.txt.gz` (the file CLIP ships).

    CLIP uses the first 49152 - 256 - 2 merges; the vocabulary is the 256 byte characters, the same with `</w>`,
    one token per merge, then <|startoftext|> and <|endoftext|> (49408 entries)."""
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = [m for m in lines[1:49152 - 256 - 2 + 1] if m.strip()]
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir


def load_clip_tokenizer(path: str | Path):
    """CLIPTokenizer from a folder with vocab.json + merges.txt, or from a bpe_simple_vocab_16e6.txt.gz file."""
    from transformers import CLIPTokenizer

    path = Path(path)
    if path.is_file() and path.name.endswith(".gz"):
        path = clip_vocab_from_bpe_gz(path, Path(tempfile.mkdtemp(prefix="clip_bpe_")))
    for name in ("vocab.json", "merges.txt"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"CLIP tokenizer folder {path} has no {name}: give [sd15] tokenizer = a folder with vocab.json and "
                "merges.txt (a diffusers SD1.5 folder's tokenizer/, or ComfyUI's comfy/sd1_tokenizer/) or open_clip's "
                "bpe_simple_vocab_16e6.txt.gz")
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True, model_max_length=CLIP_MAX_LENGTH)


def clip_ids(tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """(B, 77) ids, padded with <|endoftext|> exactly like SD1.5's pipeline (padding='max_length')."""
    enc = tokenizer(captions, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt")
    return enc.input_ids.to(device)


# How stage 2 prepares a caption for the CLIP text encoder (part of a CLIP-target cache file's identity).
CLIP_IDS_RULE = f"CLIPTokenizer padding=max_length max_length={CLIP_MAX_LENGTH} truncation"


def clip_text_target(text_encoder: nn.Module, tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """(B, 77, 768) last hidden state of SD1.5's frozen CLIP text encoder: stage 2's target, and what its cache holds."""
    return text_encoder(clip_ids(tokenizer, captions, device)).last_hidden_state


def vae_posterior(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen VAE's posterior of images (B, 3, R, R) in [-1, 1]: (mean, std), each (B, 4, R/8, R/8) in the VAE's
    output dtype. Stage 3 encodes its targets with it, and its cache holds it."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    return dist.mean, dist.std


def sample_posterior(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """mean + std * eps, eps ~ N(0, I) from the global torch RNG: the same draw, in the same order, as diffusers'
    `DiagonalGaussianDistribution.sample()` (a randn of mean's shape, device and dtype), so a cached posterior gives
    the latents the encoder gives, and the RNG streams after it are unchanged."""
    return mean + std * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)


def memory_format_of(latents: torch.Tensor) -> torch.memory_format:
    """channels_last when the channels are the innermost dimension of a (B, C, H, W) tensor, else contiguous.

    Why it matters: the VAE's posterior comes channels-last from oneDNN for some shapes (the toy VAEs on CPU) and the
    latents keep its layout; the noise a caller then draws with `randn_like(latents)` is laid out the same way, so a
    cached (contiguous) posterior must be given the encoder's layout to get the same noise, hence the same loss."""
    return torch.channels_last if latents.stride(1) < latents.stride(-1) else torch.contiguous_format


class ClipCaptionFilter:
    """Keeps captions of at most 75 CLIP tokens (77 with <|startoftext|>/<|endoftext|>), as the official align
    stage. A class rather than a closure so data-loader workers can pickle it."""

    def __init__(self, tokenizer, max_tokens: int = CLIP_MAX_LENGTH - 2):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, caption: str) -> bool:
        return len(self.tokenizer(caption, truncation=False).input_ids) - 2 <= self.max_tokens


def clip_caption_filter(tokenizer, max_tokens: int = CLIP_MAX_LENGTH - 2) -> ClipCaptionFilter:
    return ClipCaptionFilter(tokenizer, max_tokens)


# -- CLIP text encoder ----------------------------------------------------------------------------------------------
def _clip_config_from_shapes(sd: dict[str, torch.Tensor]):
    from transformers import CLIPTextConfig

    vocab, hidden = sd["embeddings.token_embedding.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0], hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1)


def clip_text_from_state_dict(full: dict[str, torch.Tensor], source: str = "state dict") -> nn.Module:
    """CLIPTextModel from an SD1.5 single-file state dict (`cond_stage_model.transformer.text_model.*`)."""
    from transformers import CLIPTextModel

    sd = {k[len(CLIP_PREFIX):]: v for k, v in full.items() if k.startswith(CLIP_PREFIX)}
    if not sd:
        raise ValueError(f"{source} has no `{CLIP_PREFIX}*` tensors: it is not an SD1.5 single-file checkpoint "
                         "with its CLIP text encoder")
    sd.pop("embeddings.position_ids", None)
    model = CLIPTextModel(_clip_config_from_shapes(sd))
    model.load_state_dict(sd, strict=True)
    return model


# -- loading ---------------------------------------------------------------------------------------------------------
def load_sd15(path: str | Path, *, device: torch.device, dtype: torch.dtype, text_encoder: bool = False,
              unet: bool = False, vae: bool = False, tokenizer_path: str | Path = "") -> SD15Parts:
    """Load the requested frozen SD1.5 parts (+ the DDPM training scheduler with the U-Net). diffusers is only
    imported when the U-Net or VAE is asked for (its import alone takes seconds)."""
    if unet or vae:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    if not path:
        raise ValueError("[sd15] path is empty: set it to a diffusers SD1.5 folder or a single-file SD1.5 checkpoint")
    path = Path(path)
    _require(path, "an SD1.5 diffusers folder or single-file checkpoint")
    parts = SD15Parts()
    if _is_diffusers_folder(path):
        if text_encoder:
            from transformers import CLIPTextModel

            enc_dir = _require(path / "text_encoder", "the CLIP text encoder folder text_encoder/ (config.json + weights)")
            parts.text_encoder = _freeze(CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True,
                                                                       dtype=dtype), dtype,
                                         device)
            parts.tokenizer = load_clip_tokenizer(tokenizer_path or _require(path / "tokenizer", "tokenizer/"))
        if unet:
            _require(path / "unet", "the U-Net folder unet/")
            parts.unet = _freeze(UNet2DConditionModel.from_pretrained(str(path), subfolder="unet",
                                                                      local_files_only=True, torch_dtype=dtype), dtype, device)
            sched_cfg = path / "scheduler" / "scheduler_config.json"
            parts.noise_scheduler = (DDPMScheduler.from_pretrained(str(path), subfolder="scheduler",
                                                                   local_files_only=True)
                                     if sched_cfg.is_file() else DDPMScheduler.from_config(SD15_SCHEDULER))
        if vae:
            _require(path / "vae", "the VAE folder vae/")
            parts.vae = _freeze(AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True,
                                                              torch_dtype=dtype),
                                dtype, device)
        return parts

    full = _read_single_file(path)
    if text_encoder:
        if not tokenizer_path:
            raise ValueError(f"{path} is a single-file checkpoint, which holds no CLIP vocabulary: set [sd15] tokenizer "
                             "to a folder with vocab.json + merges.txt (e.g. ComfyUI's comfy/sd1_tokenizer/)")
        parts.text_encoder = _freeze(clip_text_from_state_dict(full, str(path)), dtype, device)
        parts.tokenizer = load_clip_tokenizer(tokenizer_path)
    if unet:
        parts.unet = _freeze(UNet2DConditionModel.from_single_file(full, original_config=SD15_ORIGINAL_CONFIG,
                                                                   local_files_only=True), dtype, device)
        parts.noise_scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    if vae:
        parts.vae = _freeze(AutoencoderKL.from_single_file(full, original_config=SD15_ORIGINAL_CONFIG,
                                                           local_files_only=True), dtype, device)
    return parts


# -- architectures without weights (memory planning) -----------------------------------------------------------------
def sd15_architectures(path: str | Path) -> dict[str, dict]:
    """Config dicts of `unet`, `vae` and `text_encoder`: read from the diffusers folder `path` when it is one (its
    config.json files; no weights are read), else SD1.5's own (v1-inference.yaml through diffusers' single-file
    conversion, and SD15_TEXT_ENCODER), which is what a single-file SD1.5 checkpoint builds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    path = Path(path) if path else None
    if path is not None and _is_diffusers_folder(path):
        out = {"unet": dict(UNet2DConditionModel.load_config(str(path), subfolder="unet", local_files_only=True)),
               "vae": dict(AutoencoderKL.load_config(str(path), subfolder="vae", local_files_only=True))}
        text = path / "text_encoder" / "config.json"
        out["text_encoder"] = json.loads(text.read_text()) if text.is_file() else dict(SD15_TEXT_ENCODER)
        return out
    return {"unet": create_unet_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {}),
            "vae": create_vae_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {}),
            "text_encoder": dict(SD15_TEXT_ENCODER)}


def build_sd15_parts(architectures: dict[str, dict], dtype: torch.dtype, *, text_encoder: bool = False,
                     unet: bool = False, vae: bool = False) -> SD15Parts:
    """The requested frozen parts built from `sd15_architectures` in `dtype`, without weights (random init; under
    FakeTensorMode no storage at all): what the memory planner (training/memory_plan.py) measures. Built directly in
    `dtype` (default-dtype switch) because fake parameters cannot be cast in place. No tokenizer, no scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def build(make):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            module = make()
        finally:
            torch.set_default_dtype(previous)
        return module.requires_grad_(False).eval()

    parts = SD15Parts()
    if unet:
        parts.unet = build(lambda: UNet2DConditionModel.from_config(architectures["unet"]))
    if vae:
        parts.vae = build(lambda: AutoencoderKL.from_config(architectures["vae"]))
    if text_encoder:
        fields = {k: v for k, v in architectures["text_encoder"].items()
                  if not k.startswith("_") and k not in ("architectures", "torch_dtype", "dtype", "transformers_version")}
        parts.text_encoder = build(lambda: CLIPTextModel(CLIPTextConfig(**fields)))
    return parts
