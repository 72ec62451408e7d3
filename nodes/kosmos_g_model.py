"""Loading KOSMOS-G under ComfyUI's model management, and encoding with it (imports comfy: ComfyUI only).

The core model is built on the text-encoder offload device in the chosen dtype, with ComfyUI's layer classes
(`comfy.ops`) so the ModelPatcher can split it across devices in low-VRAM mode, and wrapped in a ModelPatcher.
Every encode calls `load_models_gpu`, which moves the weights to the text-encoder device (freeing room by
offloading other models if needed); ComfyUI moves them off again when the U-Net needs the memory. Outputs are
returned on ComfyUI's intermediate device and dtype, like CLIPTextEncode's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

from ..kosmos_g_core.checkpoint import CheckpointError, conditioning_text, load_checkpoint, read_header
from ..kosmos_g_core.model import KosmosG
from ..kosmos_g_core.prompt import check_lengths, negative_prompt
from .load_errors import mllm_only_message, not_kosmos_message
from .precision import dtype_from_choice
from .prompt_inputs import Prompts

log = logging.getLogger(__name__)


class EagerOps(comfy.ops.manual_cast):
    """ComfyUI's casting layer classes (no random init; weights cast to the activations' dtype at each call, which
    also lets the ModelPatcher stream layers in low-VRAM mode), with weights allocated when the layer is built.

    With dynamic VRAM (the default on NVIDIA since ComfyUI 0.4), `disable_weight_init.Linear` / `.Embedding` leave
    their weight unallocated until `load_state_dict` assigns one. The core's loader builds the model on the meta
    device and reads each tensor straight into its parameter (no second copy), so it needs the parameters to exist;
    overriding `_load_from_state_dict` is ComfyUI's own switch back to eager allocation (`comfy/ops.py`).
    """

    class Linear(comfy.ops.manual_cast.Linear):
        def _load_from_state_dict(self, *args, **kwargs):
            return torch.nn.Module._load_from_state_dict(self, *args, **kwargs)

    class Embedding(comfy.ops.manual_cast.Embedding):
        def _load_from_state_dict(self, *args, **kwargs):
            return torch.nn.Module._load_from_state_dict(self, *args, **kwargs)


class KosmosGEncoder(torch.nn.Module):
    """The module the ModelPatcher manages: the core model as its only child.

    ModelPatcher writes bookkeeping attributes on the module it manages (`device`, `model_loaded_weight_memory`,
    `model_lowvram`, ...); KosmosG has a read-only `device` property, so it must not be that module. ComfyUI's log
    names loaded models by this class's name ("Requested to load KosmosGEncoder"), so it says what is loaded.
    """

    def __init__(self, kosmos_g: KosmosG):
        super().__init__()
        self.kosmos_g = kosmos_g


class Encoded(NamedTuple):
    """What KosmosGModel.encode gives, on ComfyUI's intermediate device and dtype."""

    cond: torch.Tensor  # (B, 77, 768), SDXL: (B, 77, 2048)
    uncond: torch.Tensor  # the same shape: the null embedding (or the negative text's)
    pooled: torch.Tensor | None  # SDXL: (B, 1280) of cond; SD1.5: None
    uncond_pooled: torch.Tensor | None  # SDXL: (B, 1280) of uncond; SD1.5: None


class KosmosGModel:
    """The value of a KOSMOS_G socket: the core model in a ModelPatcher, plus the file it came from."""

    def __init__(self, patcher: comfy.model_patcher.ModelPatcher, name: str):
        self.patcher = patcher
        self.name = name

    @property
    def model(self) -> KosmosG:
        return self.patcher.model.kosmos_g

    @property
    def is_sdxl(self) -> bool:
        """True when the file makes SDXL conditioning (its AlignerNet has the SDXL heads), told by its tensors."""
        return self.model.config.pooled_dim is not None

    def encode(self, prompts: Prompts, negative: str = "") -> Encoded:
        """Prompts (B of them) -> cond and uncond, both (B, 77, 768) (SDXL: (B, 77, 2048), with their (B, 1280) pooled
        vectors), on the intermediate device.

        uncond is KOSMOS-G's null embedding M(MLLM([<s>])), or of [<s>] + `negative` when a negative text is given.
        """
        model = self.model
        # Checked before the weights move to the GPU, with the core's rule and limit (the core checks again).
        limit, image_tokens = model.config.max_prompt_tokens, model.config.image_tokens
        check_lengths(prompts, model.tokenizer, limit, image_tokens)
        check_lengths([negative_prompt(negative)], model.tokenizer, limit, image_tokens, what="negative text")
        mm.load_models_gpu([self.patcher])
        result = model.encode(list(prompts), negative=negative or None)
        pooled = uncond_pooled = None
        if self.is_sdxl:
            with torch.inference_mode():
                pooled = model.pooled(result.cond)  # (B, 1280)
                # uncond is one null row expanded over the batch: pool it once.
                uncond_pooled = model.pooled(result.uncond[:1]).expand(result.uncond.shape[0], -1)
        device, dtype = mm.intermediate_device(), mm.intermediate_dtype()

        def out(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype).contiguous()

        return Encoded(out(result.cond), out(result.uncond), out(pooled), out(uncond_pooled))


def load_kosmos_g(path: str, name: str, dtype_choice: str, folders: list[str],
                  progress: Callable[[int, int], None] | None = None) -> KosmosGModel:
    """Read `path` (a pack checkpoint) into a ModelPatcher. Errors say what the file is and where it belongs."""
    steps = 3
    report = progress or (lambda done, total: None)
    try:
        config, _ = read_header(path)
    except CheckpointError as e:
        raise CheckpointError(not_kosmos_message(e, folders)) from None
    if config.aligner is None:
        raise CheckpointError(mllm_only_message(path))
    report(1, steps)

    load_device = mm.text_encoder_device()
    offload_device = mm.text_encoder_offload_device()
    dtype = dtype_from_choice(dtype_choice, mm.text_encoder_dtype(load_device))
    if not mm.supports_cast(load_device, dtype):
        log.warning("KOSMOS-G: %s cannot hold %s weights; using fp32", load_device, dtype)
        dtype = torch.float32
    try:
        model = load_checkpoint(path, dtype=dtype, device=offload_device, ops=EagerOps)
    except CheckpointError as e:
        raise CheckpointError(not_kosmos_message(e, folders)) from None
    # On a GPU the maths runs in the weights' dtype, as the official fp16 inference. A CPU keeps half-precision
    # weights (ComfyUI's text-encoder policy) but computes in fp32, as ComfyUI does for CLIP: CPU half-precision
    # kernels are slow and less accurate.
    if mm.is_device_cpu(load_device) and dtype != torch.float32:
        model.compute_dtype = torch.float32
    report(2, steps)

    # The classic ModelPatcher (as ComfyUI uses for text encoders with dynamic VRAM disabled): the dynamic one
    # expects weights assigned lazily from a memory-mapped state dict, which is not how the core loads.
    patcher = comfy.model_patcher.ModelPatcher(KosmosGEncoder(model), load_device=load_device,
                                               offload_device=offload_device)
    report(3, steps)
    log.info("KOSMOS-G %s: %s, %s weights, load device %s, offload device %s", name, conditioning_text(config), dtype,
             load_device, offload_device)
    return KosmosGModel(patcher, name)
