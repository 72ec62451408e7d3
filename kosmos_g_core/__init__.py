"""KOSMOS-G in plain PyTorch: interleaved text-and-image prompts -> Stable Diffusion 1.5 conditioning.

    import kosmos_g_core as kg
    model = kg.load_checkpoint("kosmos-g.safetensors", dtype=torch.float16, device="cuda")
    prompt = kg.InterleavedPrompt.from_text("<i> wearing <i>", [dog, hat])
    cond, uncond = model.encode(prompt)  # (1, 77, 768) each, for an SD1.5 U-Net
    # An SDXL file (model.config.pooled_dim == 1280): cond/uncond are (1, 77, 2048) contexts, and
    # model.pooled(cond) / model.pooled(uncond) their (1, 1280) pooled vectors.

This package never imports ComfyUI; `nodes/` adapts it.
"""

from .checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from .config import PRESETS, AlignerConfig, ConnectorConfig, KosmosGConfig, MLLMConfig, VisionConfig, detect_config
from .image import preprocess
from .model import Conditioning, KosmosG
from .prompt import InterleavedPrompt, PromptBatch, PromptError, PromptImage, collate, prompt_tokens
from .tokenizer import KosmosTokenizer

__all__ = [
    "PRESETS",
    "AlignerConfig",
    "CheckpointError",
    "Conditioning",
    "ConnectorConfig",
    "InterleavedPrompt",
    "KosmosG",
    "KosmosGConfig",
    "KosmosTokenizer",
    "MLLMConfig",
    "PromptBatch",
    "PromptError",
    "PromptImage",
    "VisionConfig",
    "collate",
    "detect_config",
    "load_checkpoint",
    "preprocess",
    "prompt_tokens",
    "read_header",
    "save_checkpoint",
]
