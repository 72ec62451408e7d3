"""The pack's ComfyUI socket types and menu categories (imports comfy_api: ComfyUI only)."""

from __future__ import annotations

from comfy_api.latest import io

# A loaded KOSMOS-G model (a KosmosGModel: the core model inside a ComfyUI ModelPatcher).
KosmosGType = io.Custom("KOSMOS_G")
# A tuple of kosmos_g_core InterleavedPrompt, one per sample of a batch (usually one).
KosmosGPromptType = io.Custom("KOSMOS_G_PROMPT")

CATEGORY_LOADERS = "kosmos_g/loaders"
CATEGORY_PROMPT = "kosmos_g/prompt"
CATEGORY_CONDITIONING = "kosmos_g/conditioning"
CATEGORY_UTILS = "kosmos_g/utils"
