"""The frozen Stable Diffusion parts the trainer needs (SD1.5 or SDXL), loaded offline from the user's own files.

`[sd15] path` names the frozen base (the table keeps its first name, so every SD1.5 config still reads as before; an
SDXL folder is told by its own files, never by a name). Three layouts are accepted:
* a diffusers SD1.5 folder: `unet/`, `vae/`, `scheduler/`, `text_encoder/` (config.json + weights) and `tokenizer/`
  (vocab.json + merges.txt), e.g. a saved `StableDiffusionPipeline`;
* a diffusers SDXL folder (a saved `StableDiffusionXLPipeline`, e.g. stabilityai/stable-diffusion-xl-base-1.0): the
  same plus `text_encoder_2/` (OpenCLIP bigG, a CLIPTextModelWithProjection) and `tokenizer_2/`. It is SDXL when its
  `unet/config.json` has `addition_embed_type = "text_time"` (SDXL's pooled-text + size embedding) or it has
  `text_encoder_2/` (`base_kind`);
* a single-file SD1.5 checkpoint (`.safetensors`, or `.ckpt` read with weights_only): the U-Net and VAE go through
  diffusers' `from_single_file` with the SD1.5 `v1-inference.yaml` values given here as a dict, so nothing is
  fetched; the CLIP text encoder is built from the `cond_stage_model.transformer.text_model.*` tensors with a config
  inferred from their shapes. A single file holds no CLIP BPE vocabulary, so `[sd15] tokenizer` must then name a
  folder with vocab.json + merges.txt (ComfyUI ships one in `comfy/sd1_tokenizer/`) or open_clip's
  `bpe_simple_vocab_16e6.txt.gz`. A single-file SDXL checkpoint is refused with the folder to use instead.

Nothing here touches a model hub: every `from_pretrained` call is given a local folder and local_files_only=True.
Tiny random SD1.5- and SDXL-like folders for tests and smoke runs are written by training/tiny_assets.py.
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


# The two frozen bases a stage can train against (`base_kind`).
SD15 = "sd15"
SDXL = "sdxl"
# SDXL's size conditioning per sample ("time ids", in this order): original height, original width, crop top, crop
# left, target height, target width.
SDXL_TIME_IDS = 6


def square_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """(batch, 6) float32 size conditioning of an uncropped `resolution` square: original = target = resolution, crop
    0 (diffusers' StableDiffusionXLPipeline and ComfyUI's CLIP Text Encode (SDXL) defaults). Sampling uses it; stage 3
    reads each sample's own geometry from its batch instead."""
    sizes = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
    return sizes.expand(batch, -1)

# stabilityai/stable-diffusion-xl-base-1.0's configs, for building its architecture without its folder (the memory
# planner). unet/config.json:
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
# vae/config.json (SD1.5's VAE architecture, SDXL's weights and scaling factor)
SDXL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower with its projection (CLIPTextModelWithProjection).
# text_encoder/ is CLIP ViT-L/14's text tower, SD1.5's (SD15_TEXT_ENCODER).
SDXL_TEXT_ENCODER_2 = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                       "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
                       "layer_norm_eps": 1e-5, "projection_dim": 1280, "bos_token_id": 0, "eos_token_id": 2,
                       "pad_token_id": 1}


@dataclass
class SD15Parts:
    """Whatever of the frozen base (SD1.5 or SDXL) a stage asked for; all modules frozen (requires_grad False) and in
    eval mode. `base` is SD15 or SDXL; an SDXL base's text_encoder is CLIP-L and text_encoder_2 / tokenizer_2 its
    OpenCLIP bigG encoder and tokenizer (None for SD1.5)."""
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    unet: nn.Module | None = None
    vae: nn.Module | None = None
    noise_scheduler: object | None = None
    text_encoder_2: nn.Module | None = None
    tokenizer_2: object | None = None
    base: str = SD15

    @property
    def is_sdxl(self) -> bool:
        return self.base == SDXL


def is_diffusers_folder(path: Path) -> bool:
    """A saved diffusers pipeline folder (model_index.json, or any of unet/, vae/, text_encoder/), not a single file."""
    return path.is_dir() and ((path / "model_index.json").is_file() or any(
        (path / sub).is_dir() for sub in ("unet", "vae", "text_encoder")))


# A single-file SDXL checkpoint keeps its second text encoder (OpenCLIP bigG) under this prefix.
SDXL_SINGLE_FILE_PREFIX = "conditioner.embedders.1."


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable JSON config ({err})") from err


def base_kind(path: str | Path) -> str:
    """SDXL or SD15: which base `[sd15] path` holds, from its files alone (never its name), without reading weights.

    A diffusers folder is SDXL when its `unet/config.json` has `addition_embed_type = "text_time"` (SDXL's pooled
    text + size embedding) or when it has `text_encoder_2/`; a single .safetensors file when it has tensors under
    `conditioner.embedders.1.` (SDXL's bigG encoder). Anything else, an empty or absent path included, is SD15 (the
    loader then says what is missing)."""
    if not path:
        return SD15
    path = Path(path)
    if is_diffusers_folder(path):
        unet = path / "unet" / "config.json"
        if (path / "text_encoder_2").is_dir():
            return SDXL
        if unet.is_file() and _read_json(unet).get("addition_embed_type") == "text_time":
            return SDXL
        return SD15
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if any(k.startswith(SDXL_SINGLE_FILE_PREFIX) for k in f.keys()):
                return SDXL
    return SD15


def unet_pooled_dim(config) -> int | None:
    """The width of the pooled text vector an SDXL-style U-Net reads (`text_embeds`: 1280 for SDXL), from its config:
    `projection_class_embeddings_input_dim` minus the 6 size values of `addition_time_embed_dim` each; None for a
    U-Net without SDXL's text_time embedding (SD1.5)."""
    if config.get("addition_embed_type") != "text_time":
        return None
    return int(config["projection_class_embeddings_input_dim"]) - SDXL_TIME_IDS * int(config["addition_time_embed_dim"])


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
                                "(unet/, vae/, scheduler/, text_encoder/, tokenizer/), a diffusers SDXL folder (the "
                                "same plus text_encoder_2/, tokenizer_2/) or a single-file SD1.5 checkpoint")
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
        # the tokenizer reads its files when it is built, so the converted folder can go right after
        with tempfile.TemporaryDirectory(prefix="clip_bpe_") as tmp:
            return load_clip_tokenizer(clip_vocab_from_bpe_gz(path, Path(tmp)))
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


# How stage 2 prepares a caption for SDXL's two text encoders (part of an SDXL text-target cache file's identity).
SDXL_TEXT_IDS_RULE = (f"SDXL: each of tokenizer, tokenizer_2: {CLIP_IDS_RULE}; context = concat(hidden_states[-2], "
                      "hidden_states[-2]), pooled = text_encoder_2 text_embeds")


def sdxl_text_target(text_encoder: nn.Module, text_encoder_2: nn.Module, tokenizer, tokenizer_2, captions: list[str],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning of captions, as its pipeline makes it (diffusers `StableDiffusionXLPipeline.encode_prompt`
    without clip skip): each tokenizer pads its own ids to 77 (tokenizer_2 with its own pad token), each encoder's
    penultimate hidden state (`hidden_states[-2]`), concatenated -> context (B, 77, 768 + 1280 = 2048); bigG's
    projected end-of-text state `text_embeds` -> pooled (B, 1280). Stage 2's SDXL targets, and what its cache holds."""
    states = []
    pooled = None
    for encoder, tok in ((text_encoder, tokenizer), (text_encoder_2, tokenizer_2)):
        out = encoder(clip_ids(tok, captions, device), output_hidden_states=True)
        states.append(out.hidden_states[-2])  # (B, 77, hidden)
        if encoder is text_encoder_2:
            pooled = out.text_embeds  # (B, projection_dim)
    return torch.cat(states, dim=-1), pooled


# Stage 2's targets, by batch key (and cache entry name): the context, and for SDXL the pooled vector.
TEXT_TARGET_NAMES = ("clip_target", "clip_pooled")


def text_targets(text_encoder: nn.Module, tokenizer, captions: list[str], device: torch.device,
                 text_encoder_2: nn.Module | None = None, tokenizer_2=None) -> dict[str, torch.Tensor]:
    """Stage 2's frozen targets of captions: {"clip_target": (B, 77, 768)} for SD1.5 (clip_text_target); with SDXL's
    second encoder {"clip_target": (B, 77, 2048), "clip_pooled": (B, 1280)} (sdxl_text_target)."""
    if text_encoder_2 is None:
        return {"clip_target": clip_text_target(text_encoder, tokenizer, captions, device)}
    context, pooled = sdxl_text_target(text_encoder, text_encoder_2, tokenizer, tokenizer_2, captions, device)
    return {"clip_target": context, "clip_pooled": pooled}


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
    parts = SD15Parts(base=base_kind(path))
    if is_diffusers_folder(path):
        if text_encoder and parts.is_sdxl:
            _load_sdxl_text_encoders(parts, path, device, dtype, tokenizer_path)
        elif text_encoder:
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
            vae_dtype = frozen_vae_dtype(parts.base, AutoencoderKL.load_config(
                str(path), subfolder="vae", local_files_only=True), dtype) if parts.is_sdxl else dtype
            parts.vae = _freeze(AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True,
                                                              torch_dtype=vae_dtype),
                                vae_dtype, device)
        return parts

    if parts.is_sdxl:
        raise ValueError(f"{path} is a single-file SDXL checkpoint: the trainer reads SDXL from its diffusers folder "
                         "(stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, scheduler/, text_encoder/, "
                         "text_encoder_2/, tokenizer/, tokenizer_2/); set [sd15] path to that folder")
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


def frozen_vae_dtype(base: str, config, dtype: torch.dtype) -> torch.dtype:
    """The dtype the frozen VAE is kept in: `dtype`, except SDXL's VAE in fp16, which stays fp32. SDXL's VAE
    overflows in fp16 (its config says `force_upcast`; diffusers' SDXL pipelines upcast it likewise), which would
    give NaN latents. SD1.5 keeps `dtype` as it always did."""
    if base == SDXL and dtype == torch.float16 and config.get("force_upcast", True):
        return torch.float32
    return dtype


def _load_sdxl_text_encoders(parts: SD15Parts, path: Path, device: torch.device, dtype: torch.dtype,
                             tokenizer_path: str | Path) -> None:
    """SDXL's two frozen text encoders and tokenizers from its diffusers folder: `text_encoder` (CLIP ViT-L/14,
    CLIPTextModel) and `text_encoder_2` (OpenCLIP ViT-bigG/14 with its projection, CLIPTextModelWithProjection)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if tokenizer_path:
        raise ValueError(f"[sd15] tokenizer = {str(tokenizer_path)!r} is for single-file SD1.5 checkpoints; the SDXL "
                         f"folder {path} brings both of its tokenizers (tokenizer/, tokenizer_2/): set it to \"\"")
    for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        folder = _require(path / sub, f"SDXL's text encoder folder {sub}/ (config.json + weights)")
        setattr(parts, sub, _freeze(cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype), dtype,
                                    device))
    parts.tokenizer = load_clip_tokenizer(_require(path / "tokenizer", "tokenizer/"))
    parts.tokenizer_2 = load_clip_tokenizer(_require(path / "tokenizer_2", "SDXL's second tokenizer tokenizer_2/"))


# -- architectures without weights (memory planning) -----------------------------------------------------------------
def sd15_architectures(path: str | Path, sdxl: bool = False) -> dict:
    """Config dicts of `unet`, `vae` and `text_encoder` (SDXL: also `text_encoder_2`), and `base` (SD15 or SDXL):
    read from the diffusers folder `path` when it is one here (its config.json files, its kind by `base_kind`; no
    weights are read). Else the base's own: SD1.5's (v1-inference.yaml through diffusers' single-file conversion,
    and SD15_TEXT_ENCODER), which is what a single-file SD1.5 checkpoint builds, or with `sdxl` (the caller's
    reading of the KOSMOS-G model it plans for) SDXL base 1.0's (SDXL_UNET, SDXL_VAE, CLIP-L, SDXL_TEXT_ENCODER_2)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    path = Path(path) if path else None
    if path is not None and is_diffusers_folder(path):
        out = {"base": base_kind(path),
               "unet": dict(UNet2DConditionModel.load_config(str(path), subfolder="unet", local_files_only=True)),
               "vae": dict(AutoencoderKL.load_config(str(path), subfolder="vae", local_files_only=True))}
        text = path / "text_encoder" / "config.json"
        out["text_encoder"] = json.loads(text.read_text()) if text.is_file() else dict(SD15_TEXT_ENCODER)
        if out["base"] == SDXL:
            text_2 = path / "text_encoder_2" / "config.json"
            out["text_encoder_2"] = json.loads(text_2.read_text()) if text_2.is_file() else dict(SDXL_TEXT_ENCODER_2)
        return out
    if sdxl:
        return {"base": SDXL, "unet": dict(SDXL_UNET), "vae": dict(SDXL_VAE), "text_encoder": dict(SD15_TEXT_ENCODER),
                "text_encoder_2": dict(SDXL_TEXT_ENCODER_2)}
    return {"base": SD15, "unet": create_unet_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {}),
            "vae": create_vae_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {}),
            "text_encoder": dict(SD15_TEXT_ENCODER)}


def build_sd15_parts(architectures: dict, dtype: torch.dtype, *, text_encoder: bool = False,
                     unet: bool = False, vae: bool = False) -> SD15Parts:
    """The requested frozen parts built from `sd15_architectures` in `dtype` (the VAE in `frozen_vae_dtype`), without
    weights (random init; under FakeTensorMode no storage at all): what the memory planner (training/memory_plan.py)
    measures. Built directly in the dtype (default-dtype switch) because fake parameters cannot be cast in place. No
    tokenizer, no scheduler. An SDXL architecture's `text_encoder` brings its `text_encoder_2` too, as load_sd15."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def build(make, in_dtype=dtype):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(in_dtype)
        try:
            module = make()
        finally:
            torch.set_default_dtype(previous)
        return module.requires_grad_(False).eval()

    def text_config(name: str):
        fields = {k: v for k, v in architectures[name].items()
                  if not k.startswith("_") and k not in ("architectures", "torch_dtype", "dtype", "transformers_version")}
        return CLIPTextConfig(**fields)

    base = architectures.get("base", SD15)
    parts = SD15Parts(base=base)
    if unet:
        parts.unet = build(lambda: UNet2DConditionModel.from_config(architectures["unet"]))
    if vae:
        parts.vae = build(lambda: AutoencoderKL.from_config(architectures["vae"]),
                          frozen_vae_dtype(base, architectures["vae"], dtype))
    if text_encoder:
        parts.text_encoder = build(lambda: CLIPTextModel(text_config("text_encoder")))
        if base == SDXL:
            parts.text_encoder_2 = build(lambda: CLIPTextModelWithProjection(text_config("text_encoder_2")))
    return parts
