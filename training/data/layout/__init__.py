"""Data of the text-to-layout stage: procedural scenes with generated captions (`scenes`), COCO-Stuff from local
files and tar shards (`datasets`, `shards`), the typed `[data]` table (`config`) and the resumable loader (`loader`).
"""

from .config import ControlNetDataConfig, LayoutDataConfig
from .datasets import CocoStuffLayouts, ProceduralLayouts
from .loader import ControlNetCollate, LayoutLoader, build_dataset, collate
from .scenes import Scene, make_scene
from .shards import ShardLayouts, write_shards

__all__ = [
    "CocoStuffLayouts", "ControlNetCollate", "ControlNetDataConfig", "LayoutDataConfig", "LayoutLoader", "ProceduralLayouts", "Scene", "ShardLayouts",
    "build_dataset", "collate", "make_scene", "write_shards",
]
