"""What users reach for next to KOSMOS-G: CLIP trigger words beside it, and a model check (imports ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_types import CATEGORY_CONDITIONING, CATEGORY_UTILS, KosmosGType
from .conditioning_ops import concat_clip, model_problem, sd15_problem


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
            display_name="Check Model (KOSMOS-G)",
            category=CATEGORY_UTILS,
            description=(
                "Passes the MODEL through unchanged if it takes the KOSMOS-G file's conditioning; otherwise stops with "
                "a plain explanation naming both, instead of KSampler's KeyError 'pooled_output' or 'mat1 and mat2 "
                "shapes cannot be multiplied'. Connect Load KOSMOS-G to kosmos_g to check against that file (SD1.5 "
                "or SDXL); without it the MODEL must be Stable Diffusion 1.5 (768-d)."
            ),
            search_aliases=["sd1.5 check", "sdxl check", "model check"],
            inputs=[
                io.Model.Input("model", tooltip="The MODEL that will be sampled with KOSMOS-G conditioning."),
                KosmosGType.Input("kosmos_g", optional=True,
                                  tooltip="The KOSMOS-G model whose conditioning the MODEL will get (from Load "
                                  "KOSMOS-G). Not connected: the MODEL is checked for SD1.5."),
            ],
            outputs=[io.Model.Output(tooltip="The same MODEL.")],
        )

    @classmethod
    def execute(cls, model, kosmos_g=None) -> io.NodeOutput:
        config = getattr(getattr(model, "model", None), "model_config", None)
        unet_config = getattr(config, "unet_config", None) or {}
        name = type(config).__name__ if config is not None else type(model).__name__
        if kosmos_g is None:
            problem = sd15_problem(unet_config.get("context_dim"), name)
        else:
            kosmos = kosmos_g.model.config
            problem = model_problem(unet_config.get("context_dim"), unet_config.get("adm_in_channels"), name,
                                    kosmos.condition_shape[1], kosmos.pooled_dim, kosmos_g.name)
        if problem:
            raise ValueError(problem)
        return io.NodeOutput(model)
