"""Random SD1.5- and SDXL-shaped model files for the ComfyUI tests, run with ComfyUI's python (COMFYUI_PYTHON):

    python comfy_models.py <ComfyUI dir> <out dir>            # SD1.5
    python comfy_models.py <ComfyUI dir> <out dir> --sdxl     # SDXL

The SD1.5 set is <out>/checkpoints/<SD15 name>, <out>/controlnet/<canny name> and <out>/loras/<lora name> (the file
names the shipped workflows use). Key names and shapes come from ComfyUI's own SD1.5 classes built on the meta device,
so ComfyUI detects the checkpoint as SD15 and the ControlNet in its original `control_model.*` layout; every channel
size is the real one (detection needs them), values are random (std 0.02) and stored in fp16 to halve the ~2 GB.

The SDXL set is <out>/checkpoints/<SDXL name> and <out>/controlnet/<SDXL canny name>, made the same way from
ComfyUI's SDXL classes: the checkpoint in SDXL's own layout (U-Net, VAE, and both text encoders, CLIP-L and OpenCLIP
bigG, under `conditioner.embedders.*`), the ControlNet in the diffusers layout of the file it stands for. The U-Net
is the smallest SDXL-family shape ComfyUI knows, Segmind Vega's (745M parameters, 1/1/2 transformer blocks per level
instead of SDXL's 2/2/10 and 10 in the middle; `comfy/supported_models.py`): the same channels, the same 2048-d
cross-attention and 2816-wide ADM input, loaded as `model_base.SDXL`, so it takes exactly SDXL's conditioning while
holding 3 GB in fp32 on the test machine's CPU instead of SDXL's 10 GB. The ControlNet is the real "mid" SDXL
ControlNet shape (`SDXL_mid_cnet` in `comfy/model_detection.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
CANNY_NAME = "control_v11p_sd15_canny_fp16.safetensors"
LORA_NAME = "sd15_style_lora.safetensors"

SDXL_UNET = {  # Segmind Vega's config (model_detection.py), the smallest that ComfyUI loads as an SDXL model
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": -1, "use_linear_in_transformer": True, "context_dim": 2048,
    "num_head_channels": 64, "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_MID_CONTROLNET = {  # SDXL_mid_cnet of model_detection.py, without out_channels/transformer_depth_output
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 0, 0, 1, 1], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_NAME = "sd_xl_base_1.0.safetensors"
SDXL_CANNY_NAME = "diffusers_xl_canny_mid.safetensors"


def _comfy(comfyui: Path) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()  # before any comfy.* import, or model_management probes CUDA


class _Random:
    """Random fp16 values for given shapes. They are drawn from a 1M-entry random pool at random offsets:
    statistically the same for these tests, and ~10x faster than sampling billions of normals."""

    def __init__(self, seed: int):
        import torch

        self.torch = torch
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = (torch.randn(1 << 20, generator=self.generator) * 0.02).half()

    def noise(self, shape):
        torch, pool = self.torch, self.pool
        count = max(1, torch.Size(shape).numel())
        start = int(torch.randint(0, pool.numel(), (1,), generator=self.generator))
        repeats = (start + count) // pool.numel() + 1
        return pool.repeat(repeats)[start:start + count].reshape(shape).clone()

    def randomized(self, shapes, prefix: str) -> dict:
        torch = self.torch
        out = {}
        for key, shape in shapes.items():
            if key.endswith("position_ids"):
                out[prefix + key] = torch.arange(shape[-1]).reshape(shape)
            elif key.endswith("logit_scale"):
                out[prefix + key] = torch.tensor(4.6)
            else:
                out[prefix + key] = self.noise(shape)
        return out


def _shapes(module) -> dict:
    return {k: v.shape for k, v in module.state_dict().items()}


def main(comfyui: Path, out: Path) -> None:
    _comfy(comfyui)
    import comfy.cldm.cldm
    import comfy.lora
    import comfy.sd1_clip
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    rng = _Random(0)
    noise, randomized = rng.noise, rng.randomized

    with torch.device("meta"):
        unet = comfy.supported_models.SD15(dict(SD15_UNET)).get_model({}, device="meta")
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)
        clip = comfy.sd1_clip.SDClipModel(device="meta")
        controlnet_config = {k: v for k, v in SD15_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
        controlnet = comfy.cldm.cldm.ControlNet(hint_channels=3, device="meta", **controlnet_config)

    shapes = _shapes
    checkpoint = {}
    checkpoint.update(randomized(shapes(unet), "model."))  # keys "diffusion_model.*" -> "model.diffusion_model.*"
    checkpoint.update(randomized(shapes(vae), "first_stage_model."))
    checkpoint.update(randomized(shapes(clip), "cond_stage_model."))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(out / "checkpoints" / SD15_NAME))
    del checkpoint

    (out / "controlnet").mkdir(parents=True, exist_ok=True)
    save_file(randomized(shapes(controlnet), "control_model."), str(out / "controlnet" / CANNY_NAME))

    # A rank-4 LoRA on every cross-attention key/value projection, in kohya naming.
    unet_shapes = shapes(unet)
    lora = {}
    for lora_key, model_key in comfy.lora.model_lora_keys_unet(unet, {}).items():
        if isinstance(model_key, str) and lora_key.startswith("lora_unet_") and ("attn2.to_k" in model_key
                                                                                 or "attn2.to_v" in model_key):
            out_features, in_features = unet_shapes[model_key]
            lora[f"{lora_key}.lora_down.weight"] = noise((4, in_features))
            lora[f"{lora_key}.lora_up.weight"] = noise((out_features, 4))
            lora[f"{lora_key}.alpha"] = torch.tensor(4.0)
    (out / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out / "loras" / LORA_NAME))


def _diffusers_controlnet_keys(config: dict, ldm_keys) -> dict[str, str]:
    """ldm ControlNet key -> the diffusers key it is stored under: the inverse of what ComfyUI's
    `load_controlnet_state_dict` maps diffusers ControlNets with (comfy/controlnet.py, `comfy.utils.unet_to_diffusers`)."""
    import comfy.utils

    unet_config = dict(config, out_channels=4, transformer_depth_output=[0] * (3 * len(config["channel_mult"])))
    inverse: dict[str, str] = {}
    for diffusers, ldm in comfy.utils.unet_to_diffusers(unet_config).items():
        # label_emb is reached from class_embedding and add_embedding; SDXL ControlNets use add_embedding.
        if ldm not in inverse or diffusers.startswith("add_embedding"):
            inverse[ldm] = diffusers
    hint = sorted({int(k.split(".")[1]) for k in ldm_keys if k.startswith("input_hint_block.")})
    for i, index in enumerate(hint):
        name = "conv_in" if i == 0 else "conv_out" if i == len(hint) - 1 else f"blocks.{i - 1}"
        for suffix in ("weight", "bias"):
            inverse[f"input_hint_block.{index}.{suffix}"] = f"controlnet_cond_embedding.{name}.{suffix}"
    for key in ldm_keys:
        if key.startswith("zero_convs."):
            inverse[key] = f"controlnet_down_blocks.{key.split('.')[1]}.{key.rsplit('.', 1)[1]}"
        elif key.startswith("middle_block_out.0."):
            inverse[key] = f"controlnet_mid_block.{key.rsplit('.', 1)[1]}"
    missing = sorted(set(ldm_keys) - set(inverse))
    if missing:
        raise RuntimeError(f"no diffusers name for ControlNet keys {missing[:5]}")
    return {k: inverse[k] for k in ldm_keys}


def main_sdxl(comfyui: Path, out: Path) -> None:
    _comfy(comfyui)
    import comfy.cldm.cldm
    import comfy.sdxl_clip
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    rng = _Random(1)
    model_config = comfy.supported_models.Segmind_Vega(dict(SDXL_UNET))
    with torch.device("meta"):
        unet = model_config.get_model({}, device="meta")
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)  # SDXL's VAE has SD1.5's architecture
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
        controlnet = comfy.cldm.cldm.ControlNet(hint_channels=3, device="meta", **SDXL_MID_CONTROLNET)

    checkpoint = rng.randomized(_shapes(unet), "model.")  # "model.diffusion_model.*", "model.*" buffers dropped below
    checkpoint = {k: v for k, v in checkpoint.items() if k.startswith("model.diffusion_model.")}
    checkpoint.update(rng.randomized(_shapes(vae), "first_stage_model."))
    # clip_l.* / clip_g.* (ComfyUI's names) -> conditioner.embedders.0 / .1 (SDXL's), by ComfyUI's own save path.
    clip_sd = rng.randomized({k: v for k, v in _shapes(clip).items()}, "")
    checkpoint.update(model_config.process_clip_state_dict_for_saving(clip_sd))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(out / "checkpoints" / SDXL_NAME))
    del checkpoint, clip_sd

    ldm = rng.randomized(_shapes(controlnet), "")
    names = _diffusers_controlnet_keys(SDXL_MID_CONTROLNET, list(ldm))
    (out / "controlnet").mkdir(parents=True, exist_ok=True)
    save_file({names[k]: v for k, v in ldm.items()}, str(out / "controlnet" / SDXL_CANNY_NAME))


if __name__ == "__main__":
    if "--sdxl" in sys.argv[3:]:
        main_sdxl(Path(sys.argv[1]), Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
