"""Prompt-to-layout nodes (imports ComfyUI): plan a segmentation layout from a prompt, feed it to a stock ControlNet
segmentation model, cut entity masks for regional conditioning, convert palettes both ways, score layouts.

The math lives in kosmos_g_core.layout and what the nodes do with their inputs in nodes/layout_inputs.py (both tested
without ComfyUI); these classes only adapt types. `LAYOUT_NODES` is what the pack's extension registers; the
`models/kosmos_g_layout/` folder is registered with the pack's other folder (nodes/model_folder.py).
"""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io, ui

from ..kosmos_g_core.layout.learned import LayoutCheckpointError, load_layout_model
from ..kosmos_g_core.layout.palettes import PALETTE_NAMES
from .layout_inputs import (
    LayoutNodeError,
    entity_mask,
    layout_from_image,
    masks_tensor,
    plan_layout,
    render_image,
)
from .model_folder import LAYOUT_FOLDER

log = logging.getLogger(__name__)

CATEGORY_LAYOUT = "kosmos_g/layout"
LayoutType = io.Custom("KOSMOS_G_LAYOUT")
LayoutModelType = io.Custom("KOSMOS_G_LAYOUT_MODEL")
SegmenterType = io.Custom("KOSMOS_G_SEGMENTER")

_PALETTE_TOOLTIP = (
    "coco_panoptic_133: the COCO protocol of control_v11p_sd15_seg (OneFormer-COCO colours; best for these nouns). "
    "ade20k_150: its ADE20K protocol (sheep -> animal, cloud -> sky, roof -> house). coco_stuff_171: one colour per "
    "internal class, for lossless editing and previews."
)


class KosmosGLayoutModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGLayoutModelLoader",
            display_name="Load Layout Model (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description="Loads a trained text-to-layout model (.safetensors exported by the pack's layout training "
            "stage) from models/kosmos_g_layout/.",
            inputs=[io.Combo.Input("model_name", options=folder_paths.get_filename_list(LAYOUT_FOLDER),
                                   tooltip="A layout model in models/kosmos_g_layout/.")],
            outputs=[LayoutModelType.Output(display_name="layout_model")],
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(LAYOUT_FOLDER, model_name)
        if not path or not os.path.isfile(path):
            folders = folder_paths.get_folder_paths(LAYOUT_FOLDER)
            raise FileNotFoundError(
                f"layout model '{model_name}' not found in models/{LAYOUT_FOLDER}/ (searched: {', '.join(folders)}). "
                "Train one with `python -m training.train --config training/configs/layout.toml` and copy "
                "export.safetensors there, then press R (refresh).")
        try:
            return io.NodeOutput(load_layout_model(path))
        except LayoutCheckpointError as e:
            raise ValueError(str(e)) from e


class KosmosGPromptToLayout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGPromptToLayout",
            display_name="Prompt to Layout (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description=(
                "Plans a semantic layout (segmentation map) from a scene prompt: stuff in bands (sky on top, grass/"
                "road/sea at the bottom), things on the ground, counts ('two sheep') and relations (in front of, "
                "behind, along, on, above, next to, left/right of). Without a layout model the deterministic rule-"
                "based planner is used. Outputs the palette image for a stock ControlNet segmentation model "
                "(control_v11p_sd15_seg), one mask per entity, the layout and its entity list."
            ),
            search_aliases=["layout", "segmentation map", "semantic layout", "seg map", "scene layout"],
            is_output_node=True,
            inputs=[
                io.String.Input("text", multiline=True,
                                default="Two sheep, one eating grass with a tree in front of a mountain; the sky has "
                                        "a cloud",
                                tooltip="Scene description; nouns are COCO-Stuff classes or synonyms (street = road)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8),
                io.Int.Input("height", default=512, min=64, max=4096, step=8),
                io.Combo.Input("palette", options=list(PALETTE_NAMES), default="coco_panoptic_133",
                               tooltip=_PALETTE_TOOLTIP),
                LayoutModelType.Input("layout_model", optional=True,
                                      tooltip="A trained layout model; empty = rule-based planner."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="For layout models trained in the SD1.5 CLIP text space: a KOSMOS-G or "
                                              "CLIP conditioning of the prompt (so image prompts work too)."),
                io.Boolean.Input("sample", default=False, optional=True,
                                 tooltip="Layout model only: draw a layout (different per seed) instead of the most "
                                         "likely one."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True),
            ],
            outputs=[
                io.Image.Output(display_name="layout_image", tooltip="Palette image for ControlNet (exact colours)."),
                io.Mask.Output(display_name="entity_masks", tooltip="One mask per entity, in entity-list order."),
                LayoutType.Output(display_name="layout"),
                io.String.Output(display_name="entities", tooltip="The entity list as JSON."),
            ],
        )

    @classmethod
    def execute(cls, text: str, width: int, height: int, palette: str, layout_model=None, conditioning=None,
                sample: bool = False, seed: int = 0) -> io.NodeOutput:
        cond = conditioning[0][0][:1] if conditioning else None
        try:
            layout = plan_layout(text, width, height, layout_model, conditioning=cond, sample=sample, seed=seed)
        except LayoutNodeError as e:
            raise ValueError(f"Prompt to Layout: {e}") from e
        image = render_image(layout, palette)
        entities = layout.entity_text()
        return io.NodeOutput(image, masks_tensor(layout), layout, entities,
                             ui=ui.PreviewImage(image, cls=cls))


class KosmosGLayoutToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGLayoutToImage",
            display_name="Layout to Palette Image (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description="Renders a layout in a segmentation palette (exact colours, no smoothing), e.g. to switch a "
            "COCO layout to the ADE20K protocol through the class-merge table.",
            inputs=[LayoutType.Input("layout"),
                    io.Combo.Input("palette", options=list(PALETTE_NAMES), default="coco_panoptic_133",
                                   tooltip=_PALETTE_TOOLTIP)],
            outputs=[io.Image.Output(display_name="layout_image")],
        )

    @classmethod
    def execute(cls, layout, palette: str) -> io.NodeOutput:
        image = render_image(layout, palette)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


class KosmosGImageToLayout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGImageToLayout",
            display_name="Palette Image to Layout (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description="Reads a segmentation map image (a hand-edited layout, or a OneFormer/UniFormer preprocessor "
            "output) back into a layout by nearest palette colour. The image must be lossless (PNG) and resized "
            "with nearest neighbour only; a photo or a JPEG is refused with an explanation.",
            inputs=[
                io.Image.Input("image"),
                io.Combo.Input("palette", options=["auto", *PALETTE_NAMES], default="auto",
                               tooltip="auto picks the palette that explains the most pixels exactly."),
                io.String.Input("prompt", default="", optional=True,
                                tooltip="Optional prompt whose nouns name the entities."),
            ],
            outputs=[LayoutType.Output(display_name="layout"), io.Mask.Output(display_name="entity_masks"),
                     io.String.Output(display_name="entities")],
        )

    @classmethod
    def execute(cls, image, palette: str, prompt: str = "") -> io.NodeOutput:
        try:
            layout = layout_from_image(image, palette, prompt)
        except LayoutNodeError as e:
            raise ValueError(str(e)) from e
        return io.NodeOutput(layout, masks_tensor(layout), layout.entity_text())


class KosmosGLayoutEntityMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGLayoutEntityMask",
            display_name="Layout Entity Mask (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description="One entity of a layout as a MASK, for regional prompts (stock ConditioningSetMask) or "
            "inpainting. Pick it by name ('sheep' = every sheep), label ('sheep 2/2') or 1-based number.",
            inputs=[
                LayoutType.Input("layout"),
                io.String.Input("entity", default="sheep 1/2",
                                tooltip="Name, class, label from the entity list, or its 1-based number."),
                io.Int.Input("width", default=0, min=0, max=4096, step=8, optional=True,
                             tooltip="Resize the mask (nearest) to this size; 0 = the layout's size."),
                io.Int.Input("height", default=0, min=0, max=4096, step=8, optional=True),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, layout, entity: str, width: int = 0, height: int = 0) -> io.NodeOutput:
        try:
            mask = entity_mask(layout, entity, width, height)
        except LayoutNodeError as e:
            raise ValueError(f"Layout Entity Mask: {e}") from e
        return io.NodeOutput(mask)


class KosmosGLayoutFaithfulness(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KosmosGLayoutFaithfulness",
            display_name="Layout Faithfulness mIoU (KOSMOS-G)",
            category=CATEGORY_LAYOUT,
            description="Segments generated images with a segmenter you provide (a transformers SegFormer / UperNet / "
            "Mask2Former folder on this machine; use a different one than any used in training) and reports the "
            "mIoU against the layout they were generated from.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images"),
                LayoutType.Input("layout"),
                io.String.Input("segmenter_path", default="",
                                tooltip="Local folder with config.json + weights (save_pretrained format)."),
            ],
            outputs=[io.Float.Output(display_name="miou"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, images, layout, segmenter_path: str) -> io.NodeOutput:
        import json

        from ..kosmos_g_core.layout.segmenter import Segmenter, layout_faithfulness

        if not segmenter_path or not os.path.isdir(segmenter_path):
            raise ValueError(f"Layout Faithfulness: segmenter folder {segmenter_path!r} not found; give the path of "
                             "a transformers segmentation model saved with save_pretrained (config.json + weights)")
        seg = Segmenter.from_pretrained(segmenter_path)
        scores = layout_faithfulness(seg, images.movedim(-1, 1).float(), [layout.label_map] * images.shape[0])
        report = json.dumps(scores, indent=1)
        return io.NodeOutput(float(scores["miou"]), report, ui=ui.PreviewText(report))


LAYOUT_NODES: list[type[io.ComfyNode]] = [
    KosmosGLayoutModelLoader,
    KosmosGPromptToLayout,
    KosmosGLayoutToImage,
    KosmosGImageToLayout,
    KosmosGLayoutEntityMask,
    KosmosGLayoutFaithfulness,
]
