"""The ComfyExtension of the pack: every node class it registers (imports ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .conditioning_nodes import KosmosGCheckModel, KosmosGConcatCLIP
from .encode_nodes import KosmosGEncode, KosmosGTextEncode
from .layout_nodes import LAYOUT_NODES
from .loader_node import KosmosGLoader
from .prompt_nodes import KosmosGInterleavedPrompt, KosmosGPromptBatch

KOSMOS_G_NODES: list[type[io.ComfyNode]] = [
    KosmosGLoader,
    KosmosGInterleavedPrompt,
    KosmosGPromptBatch,
    KosmosGEncode,
    KosmosGTextEncode,
    KosmosGConcatCLIP,
    KosmosGCheckModel,
]


class KosmosGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return KOSMOS_G_NODES + LAYOUT_NODES


async def comfy_entrypoint() -> KosmosGExtension:
    return KosmosGExtension()
