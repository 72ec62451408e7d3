"""Random SD1.5-shaped model files for the ComfyUI tests, run with ComfyUI's python (COMFYUI_PYTHON):

    python comfy_models.py <ComfyUI dir> <out dir>

writes <out>/checkpoints/<SD15 name>, <out>/controlnet/<canny name> and <out>/loras/<lora name> (the file names the
shipped workflows use). Key names and shapes come from ComfyUI's own SD1.5 classes built on the meta device, so
ComfyUI detects the checkpoint as SD15 and the ControlNet in its original `control_model.*` layout; every channel
size is the real one (detection needs them), values are random (std 0.02) and stored in fp16 to halve the ~2 GB.
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


def main(comfyui: Path, out: Path) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()  # before any comfy.* import, or model_management probes CUDA
    import comfy.cldm.cldm
    import comfy.lora
    import comfy.sd1_clip
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    # Values are drawn from a 1M-entry random pool at random offsets: statistically the same for these tests, and
    # ~10x faster than sampling 1.4 billion normals.
    pool = (torch.randn(1 << 20, generator=generator) * 0.02).half()

    def noise(shape: torch.Size) -> torch.Tensor:
        count = max(1, torch.Size(shape).numel())
        start = int(torch.randint(0, pool.numel(), (1,), generator=generator))
        repeats = (start + count) // pool.numel() + 1
        return pool.repeat(repeats)[start:start + count].reshape(shape).clone()

    def randomized(shapes: dict[str, torch.Size], prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for key, shape in shapes.items():
            if key.endswith("position_ids"):
                out[prefix + key] = torch.arange(shape[-1]).reshape(shape)
            elif key.endswith("logit_scale"):
                out[prefix + key] = torch.tensor(4.6)
            else:
                out[prefix + key] = noise(shape)
        return out

    with torch.device("meta"):
        unet = comfy.supported_models.SD15(dict(SD15_UNET)).get_model({}, device="meta")
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)
        clip = comfy.sd1_clip.SDClipModel(device="meta")
        controlnet_config = {k: v for k, v in SD15_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
        controlnet = comfy.cldm.cldm.ControlNet(hint_channels=3, device="meta", **controlnet_config)

    def shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in module.state_dict().items()}

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


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
