"""KOSMOS-G Encode and KOSMOS-G Text Encode: prompts -> SD1.5 CONDITIONING (imports ComfyUI).

Batch behaviour: a KOSMOS_G_PROMPT holding B prompts (one, unless built with Prompt Batch) gives positive and
negative of shape (B, 77, 768). KSampler fits them to the latent batch N as ComfyUI always does: B = 1 is repeated
for every latent, B = N gives latent i prompt i, otherwise prompts are cycled (a, b, a, ...).
"""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_types import CATEGORY_CONDITIONING, KosmosGPromptType, KosmosGType
from .conditioning_ops import to_conditioning
from .prompt_inputs import check_prompts, text_prompt


class KosmosGEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGEncode",
            display_name="KOSMOS-G Encode",
            category=CATEGORY_CONDITIONING,
            description=(
                "Turns an interleaved prompt into Stable Diffusion 1.5 conditioning (B, 77, 768) for the stock "
                "KSampler, ControlNet and LoRA nodes. The negative is KOSMOS-G's own unconditional embedding (not "
                "CLIP's), the same length as the positive, so KSampler runs both in one U-Net batch."
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
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="(B, 77, 768) conditioning of the prompt(s)."),
                io.Conditioning.Output(display_name="negative", tooltip="(B, 77, 768) unconditional embedding."),
            ],
        )

    @classmethod
    def execute(cls, kosmos_g, prompt, negative: str = "") -> io.NodeOutput:
        cond, uncond = kosmos_g.encode(check_prompts(prompt), negative or "")
        return io.NodeOutput(to_conditioning(cond), to_conditioning(uncond))


class KosmosGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGTextEncode",
            display_name="KOSMOS-G Text Encode",
            category=CATEGORY_CONDITIONING,
            description=(
                "Drop-in replacement for CLIP Text Encode: text -> SD1.5 conditioning (1, 77, 768) made by KOSMOS-G. "
                "Swap it in for both prompts of an existing SD1.5 workflow; an empty text gives KOSMOS-G's "
                "unconditional embedding, the right negative."
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
            outputs=[io.Conditioning.Output(tooltip="(1, 77, 768) conditioning, like CLIP Text Encode's.")],
        )

    @classmethod
    def execute(cls, text: str, kosmos_g) -> io.NodeOutput:
        prompts = text_prompt(text)
        if text:
            cond, _ = kosmos_g.encode(prompts)
        else:
            # The empty prompt is [<s>], which is exactly the null embedding; encode it once, not twice.
            _, cond = kosmos_g.encode(prompts)
        return io.NodeOutput(to_conditioning(cond))
