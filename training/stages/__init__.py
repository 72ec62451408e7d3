"""Training stages. `STAGES[name]` is the Stage class the trainer runs for `stage = name` in a config."""

from . import controlnet, layout, stage1, stage2, stage3  # noqa: F401  (each registers itself)
from .base import STAGES, KosmosStage, Stage, StageModule, register

__all__ = ["STAGES", "KosmosStage", "Stage", "StageModule", "register"]
