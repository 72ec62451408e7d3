"""The ComfyExtension of the pack: every node class it registers (imports ComfyUI)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

from .conditioning_nodes import KosmosGCheckModel, KosmosGConcatCLIP
from .encode_nodes import KosmosGEncode, KosmosGTextEncode
from .loader_node import KosmosGLoader
from .prompt_nodes import KosmosGInterleavedPrompt, KosmosGPromptBatch

log = logging.getLogger(__name__)

KOSMOS_G_NODES: list[type[io.ComfyNode]] = [
    KosmosGLoader,
    KosmosGInterleavedPrompt,
    KosmosGPromptBatch,
    KosmosGEncode,
    KosmosGTextEncode,
    KosmosGConcatCLIP,
    KosmosGCheckModel,
]


def layout_nodes() -> list[type[io.ComfyNode]]:
    """LAYOUT_NODES of nodes/layout_nodes.py (the prompt-to-layout part), if that module is there.

    A failure there is logged and skipped: the layout nodes are an add-on, and a bug in them must not take the
    KOSMOS-G nodes down with them (an exception here would mark the whole pack IMPORT FAILED).
    """
    if not Path(__file__).with_name("layout_nodes.py").is_file():
        return []
    try:
        module = importlib.import_module(".layout_nodes", __package__)
        return list(module.LAYOUT_NODES)
    except Exception:
        log.exception("KOSMOS-G: the layout nodes (nodes/layout_nodes.py) failed to load; the other nodes work")
        return []


class KosmosGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return KOSMOS_G_NODES + layout_nodes()


async def comfy_entrypoint() -> KosmosGExtension:
    return KosmosGExtension()
