"""KOSMOS-G Encode and KOSMOS-G Text Encode: prompts -> SD1.5 or SDXL CONDITIONING (imports ComfyUI).

Batch behaviour: a KOSMOS_G_PROMPT holding B prompts (one, unless built with Prompt Batch) gives positive and
negative of shape (B, 77, 768) (an SDXL file: (B, 77, 2048) with (B, 1280) pooled vectors). KSampler fits them to the
latent batch N as ComfyUI always does: B = 1 is repeated for every latent, B = N gives latent i prompt i, otherwise
prompts are cycled (a, b, a, ...).

Which base the conditioning is for follows from the loaded file's tensors. With an SDXL file, KOSMOS-G Encode adds the
size conditioning of CLIP Text Encode (SDXL) (same inputs, same defaults) to positive and negative; KOSMOS-G Text
Encode, the drop-in for plain CLIP Text Encode, adds none, so sampling takes the sizes from the latent as it does for
CLIP Text Encode with an SDXL CLIP.
"""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_types import CATEGORY_CONDITIONING, KosmosGPromptType, KosmosGType
from .conditioning_ops import SDXL_SIZE_DEFAULTS, to_conditioning
from .prompt_inputs import check_prompts, text_prompt

# ComfyUI's nodes.MAX_RESOLUTION, the bound CLIP Text Encode (SDXL) gives its sizes (not imported: in this
# repository `nodes` is the pack's own package).
MAX_RESOLUTION = 16384
_SIZE_TOOLTIPS = {
    "width": "SDXL files only (ignored with an SD1.5 file): the 'original size' width SDXL is conditioned on, as in "
             "CLIP Text Encode (SDXL).",
    "height": "SDXL files only: the 'original size' height, as in CLIP Text Encode (SDXL).",
    "crop_w": "SDXL files only: the crop's left offset SDXL is conditioned on (0 = uncropped), as in CLIP Text Encode "
              "(SDXL).",
    "crop_h": "SDXL files only: the crop's top offset (0 = uncropped), as in CLIP Text Encode (SDXL).",
    "target_width": "SDXL files only: the target width SDXL is conditioned on, as in CLIP Text Encode (SDXL).",
    "target_height": "SDXL files only: the target height, as in CLIP Text Encode (SDXL).",
}


def _size_inputs() -> list[io.Int.Input]:
    """The size widgets of CLIP Text Encode (SDXL), optional and under 'advanced' (they do nothing for SD1.5)."""
    return [io.Int.Input(name, default=default, min=0, max=MAX_RESOLUTION, optional=True, advanced=True,
                         tooltip=_SIZE_TOOLTIPS[name])
            for name, default in SDXL_SIZE_DEFAULTS.items()]


class KosmosGEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGEncode",
            display_name="KOSMOS-G Encode",
            category=CATEGORY_CONDITIONING,
            description=(
                "Turns an interleaved prompt into Stable Diffusion 1.5 conditioning (B, 77, 768) for the stock "
                "KSampler, ControlNet and LoRA nodes, or, with an SDXL KOSMOS-G file, into SDXL conditioning "
                "((B, 77, 2048) with the pooled vector and the size conditioning of CLIP Text Encode (SDXL)). The "
                "negative is KOSMOS-G's own unconditional embedding (not CLIP's), the same length as the positive, so "
                "KSampler runs both in one U-Net batch."
            ),
            search_aliases=["kosmos encode", "image prompt encode", "kosmos conditioning"],
            inputs=[
                KosmosGType.Input("kosmos_g", tooltip="The model from Load KOSMOS-G."),
                KosmosGPromptType.Input("prompt", tooltip="From Interleaved Prompt Builder (or Prompt Batch)."),
                io.String.Input(
                    "negative",
                    optional=True,
                    multiline=True,
                    default="",
                    tooltip="Optional negative text. Empty (recommended, as in the paper) gives KOSMOS-G's null "
                    "embedding; text gives the embedding of that text instead. It is plain text, as in the official "
                    "code: a <i> here is read as the characters, not as an image.",
                ),
                *_size_inputs(),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="(B, 77, 768) conditioning of the prompt(s); "
                                       "(B, 77, 2048) + pooled + sizes with an SDXL file."),
                io.Conditioning.Output(display_name="negative", tooltip="(B, 77, 768) unconditional embedding; "
                                       "(B, 77, 2048) + pooled + sizes with an SDXL file."),
            ],
        )

    @classmethod
    def execute(cls, kosmos_g, prompt, negative: str = "", width: int = 1024, height: int = 1024, crop_w: int = 0,
                crop_h: int = 0, target_width: int = 1024, target_height: int = 1024) -> io.NodeOutput:
        out = kosmos_g.encode(check_prompts(prompt), negative or "")
        if out.pooled is None:  # an SD1.5 file: exactly what it always gave
            return io.NodeOutput(to_conditioning(out.cond), to_conditioning(out.uncond))
        # As CLIP Text Encode (SDXL): both prompts carry the size conditioning.
        size = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h, "target_width": target_width,
                "target_height": target_height}
        return io.NodeOutput(to_conditioning(out.cond, out.pooled, size),
                             to_conditioning(out.uncond, out.uncond_pooled, size))


class KosmosGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGTextEncode",
            display_name="KOSMOS-G Text Encode",
            category=CATEGORY_CONDITIONING,
            description=(
                "Drop-in replacement for CLIP Text Encode: text -> SD1.5 conditioning (1, 77, 768) made by KOSMOS-G "
                "(with an SDXL KOSMOS-G file: SDXL conditioning (1, 77, 2048) + pooled, sizes taken from the latent "
                "as with CLIP Text Encode). Swap it in for both prompts of an existing workflow; an empty text gives "
                "KOSMOS-G's unconditional embedding, the right negative."
            ),
            search_aliases=["kosmos text", "clip text encode", "text encode kosmos"],
            inputs=[
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="",
                    tooltip="The prompt text (no <i>: use Interleaved Prompt Builder for images). Empty = unconditional.",
                ),
                KosmosGType.Input("kosmos_g", tooltip="The model from Load KOSMOS-G."),
            ],
            outputs=[io.Conditioning.Output(tooltip="(1, 77, 768) conditioning, like CLIP Text Encode's; "
                                            "(1, 77, 2048) + pooled with an SDXL file.")],
        )

    @classmethod
    def execute(cls, text: str, kosmos_g) -> io.NodeOutput:
        prompts = text_prompt(text)
        out = kosmos_g.encode(prompts)
        if text:
            cond, pooled = out.cond, out.pooled
        else:
            # The empty prompt is [<s>], which is exactly the null embedding; encode it once, not twice.
            cond, pooled = out.uncond, out.uncond_pooled
        return io.NodeOutput(to_conditioning(cond, pooled))
