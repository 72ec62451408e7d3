"""Interleaved Prompt Builder and Prompt Batch: text + images -> KOSMOS_G_PROMPT (imports ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_types import CATEGORY_PROMPT, KosmosGPromptType
from .prompt_inputs import MAX_IMAGE_INPUTS, ImageSlot, batch_prompts, build_prompts

_SLOTS = range(1, MAX_IMAGE_INPUTS + 1)


class KosmosGInterleavedPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        images = [
            io.Image.Input(
                f"image_{k}",
                optional=True,
                tooltip="Fills the next <i> of the text: image_1 first, then image_2, and so on. A batch of N images "
                "fills N placeholders in order.",
            )
            for k in _SLOTS
        ]
        masks = [
            io.Mask.Input(
                f"mask_{k}",
                optional=True,
                tooltip=f"Optional subject mask of image_{k}: 1 = subject, 0 = background (painted white, as in "
                "KOSMOS-G's training data). Segmentation nodes give this; LoadImage's alpha mask is the opposite, "
                "pass it through InvertMask.",
            )
            for k in _SLOTS
        ]
        return io.Schema(
            node_id="KosmosGInterleavedPrompt",
            display_name="Interleaved Prompt Builder (KOSMOS-G)",
            category=CATEGORY_PROMPT,
            description=(
                "Builds a KOSMOS-G prompt from text with <i> where each image goes, e.g. '<i> wearing <i>' with "
                "image_1 and image_2. Connected images fill the placeholders in order; an image batch fills several. "
                "For more than 4 image inputs, chain builders through 'prompt' (the chained prompt comes first)."
            ),
            search_aliases=["kosmos prompt", "image prompt", "interleaved", "subject prompt"],
            inputs=[
                io.String.Input(
                    "text",
                    multiline=True,
                    default="a photo of <i>",
                    placeholder="<i> wearing <i>",
                    tooltip="The prompt, with one <i> per image. Text and images are read in the order written.",
                ),
                KosmosGPromptType.Input(
                    "prompt",
                    optional=True,
                    tooltip="Optional earlier prompt (another builder); it comes first and this text follows it.",
                ),
                *images,
                *masks,
            ],
            outputs=[KosmosGPromptType.Output(display_name="prompt", tooltip="The interleaved prompt, for KOSMOS-G Encode.")],
        )

    @classmethod
    def execute(cls, text: str, prompt=None, **inputs) -> io.NodeOutput:
        slots = [
            ImageSlot(f"image_{k}", inputs.get(f"image_{k}"), inputs.get(f"mask_{k}"), f"mask_{k}") for k in _SLOTS
        ]
        return io.NodeOutput(build_prompts(text, slots, prompt))


class KosmosGPromptBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGPromptBatch",
            display_name="Prompt Batch (KOSMOS-G)",
            category=CATEGORY_PROMPT,
            description=(
                "Puts several KOSMOS-G prompts into one batch: KOSMOS-G Encode then gives one conditioning per prompt "
                "(B, 77, 768), and a latent batch of the same size gets one prompt per image. Chain for more than 4."
            ),
            inputs=[
                KosmosGPromptType.Input("prompt_1", tooltip="First prompt (may itself be a batch)."),
                *[KosmosGPromptType.Input(f"prompt_{k}", optional=True, tooltip="Next prompt.") for k in (2, 3, 4)],
            ],
            outputs=[KosmosGPromptType.Output(display_name="prompt", tooltip="The prompts, in input order.")],
        )

    @classmethod
    def execute(cls, prompt_1, prompt_2=None, prompt_3=None, prompt_4=None) -> io.NodeOutput:
        return io.NodeOutput(batch_prompts([prompt_1, prompt_2, prompt_3, prompt_4]))
