"""Data pipeline of the trainer: webdataset shard readers, source mixing, stage sampling rules, stateful loader.

Public entry point: :func:`build_dataloader` (docs/data.md). Shard formats and the builder command are
documented in ``docs/data.md``.
"""

from .config import STAGE_KINDS, DataConfig, DataConfigError, SourceConfig, parse_data_config
from .loader import StatefulLoader, build_dataloader
from .mixing import SourceSchedule
from .shards import ShardError, expand_shards

__all__ = [
    "STAGE_KINDS",
    "DataConfig",
    "DataConfigError",
    "ShardError",
    "SourceConfig",
    "SourceSchedule",
    "StatefulLoader",
    "build_dataloader",
    "expand_shards",
    "parse_data_config",
]
