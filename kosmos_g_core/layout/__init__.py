"""Semantic layouts (plain PyTorch/numpy/PIL, never ComfyUI): COCO-Stuff-171 label space, ControlNet palettes,
prompt parsing, the rule-based and the learned prompt-to-layout planners, and layout metrics. See docs/layout.md."""

from .labels import CLASS_ID, COCO_STUFF_CLASSES, IGNORE, NUM_CLASSES, class_id, display_name, is_thing
from .layout import Entity, Layout, layout_from_label_map
from .learned import LayoutCheckpointError, LearnedPlanner, load_layout_model, save_layout_model
from .metrics import ConfusionMatrix, LayoutEvaluator, best_of_k, dataset_miou
from .palettes import (
    ADE20K_150,
    COCO_PANOPTIC_133,
    COCO_STUFF_171,
    PALETTE_NAMES,
    Palette,
    PaletteError,
    get_palette,
    parse_ids,
    parse_layout_image,
)
from .planner import LayoutPlanner, RuleBasedPlanner
from .prompt_parser import ParsedPrompt, parse_prompt
from .vocabulary import resolve_class

__all__ = [
    "ADE20K_150", "CLASS_ID", "COCO_PANOPTIC_133", "COCO_STUFF_171", "COCO_STUFF_CLASSES", "IGNORE", "NUM_CLASSES",
    "PALETTE_NAMES", "ConfusionMatrix", "Entity", "Layout", "LayoutCheckpointError", "LayoutEvaluator",
    "LayoutPlanner", "LearnedPlanner", "Palette", "PaletteError", "ParsedPrompt", "RuleBasedPlanner", "best_of_k",
    "class_id", "dataset_miou", "display_name", "get_palette", "is_thing", "layout_from_label_map",
    "load_layout_model", "parse_ids", "parse_layout_image", "parse_prompt", "resolve_class", "save_layout_model",
]
