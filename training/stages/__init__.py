"""Training stages. `STAGES[name]` is the Stage class the trainer runs for `stage = name` in a config."""

import importlib

from . import stage1, stage2, stage3  # noqa: F401  (each registers itself)
from .base import STAGES, KosmosStage, Stage, StageModule, register

try:  # the text-to-layout stage (layout engineer's module); the KOSMOS-G stages work without it
    importlib.import_module(f"{__name__}.layout")
except ModuleNotFoundError as e:
    if e.name != f"{__name__}.layout":
        raise

__all__ = ["STAGES", "KosmosStage", "Stage", "StageModule", "register"]
