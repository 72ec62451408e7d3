"""What users reach for next to KOSMOS-G: CLIP trigger words beside it, and an SD1.5 check (imports ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_types import CATEGORY_CONDITIONING, CATEGORY_UTILS
from .conditioning_ops import concat_clip, sd15_problem


class KosmosGConcatCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGConcatCLIP",
            display_name="KOSMOS-G + CLIP Text (Concat)",
            category=CATEGORY_CONDITIONING,
            description=(
                "Appends CLIP text conditioning after KOSMOS-G's, token-wise, so the U-Net sees both: use it for a "
                "LoRA's trigger words (CLIP Text Encode of the LoRA-patched CLIP). Unlike Conditioning (Concat) it "
                "broadcasts a single prompt over a batch, scales the CLIP part, and explains SD1.5/SDXL mismatches."
            ),
            search_aliases=["lora trigger", "concat clip", "kosmos clip"],
            inputs=[
                io.Conditioning.Input("kosmos_g_conditioning", tooltip="Positive conditioning from KOSMOS-G Encode."),
                io.Conditioning.Input("clip_conditioning", tooltip="From CLIP Text Encode, e.g. the LoRA trigger words."),
                io.Float.Input(
                    "clip_strength",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip="Multiplies the CLIP tokens. 1.0 = as CLIP Text Encode made them.",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="KOSMOS-G tokens followed by the CLIP tokens (L = 77 + 77k).")],
        )

    @classmethod
    def execute(cls, kosmos_g_conditioning, clip_conditioning, clip_strength: float = 1.0) -> io.NodeOutput:
        return io.NodeOutput(concat_clip(kosmos_g_conditioning, clip_conditioning, clip_strength))


class KosmosGCheckModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGCheckModel",
            display_name="Check SD1.5 Model (KOSMOS-G)",
            category=CATEGORY_UTILS,
            description=(
                "Passes the MODEL through unchanged if it takes KOSMOS-G's 768-d conditioning (Stable Diffusion 1.5 "
                "and fine-tunes); otherwise stops with a plain explanation instead of KSampler's KeyError "
                "'pooled_output' (SDXL) or 'mat1 and mat2 shapes cannot be multiplied' (SD2)."
            ),
            search_aliases=["sd1.5 check", "model check"],
            inputs=[io.Model.Input("model", tooltip="The MODEL that will be sampled with KOSMOS-G conditioning.")],
            outputs=[io.Model.Output(tooltip="The same MODEL.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        config = getattr(getattr(model, "model", None), "model_config", None)
        unet_config = getattr(config, "unet_config", None) or {}
        name = type(config).__name__ if config is not None else type(model).__name__
        problem = sd15_problem(unet_config.get("context_dim"), name)
        if problem:
            raise ValueError(problem)
        return io.NodeOutput(model)
