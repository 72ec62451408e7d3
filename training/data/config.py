"""The ``[data]`` table of a stage config, parsed into frozen dataclasses with the official defaults.

```toml
[data]
batch_size = 16
num_workers = 2
[[data.sources]]
kind = "compositional"
shards = "data/openimage/{000000..000099}.tar"
weight = 2
```
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..typed_tables import ConfigTypeError, check_table, check_value

log = logging.getLogger(__name__)

# Which source kinds each stage reads (docs/data.md).
STAGE_KINDS: dict[str, tuple[str, ...]] = {
    "stage1": ("text", "captions", "interleaved"),
    "stage2": ("captions",),
    "stage3": ("captions", "editing", "compositional"),
}

# Official stage-3 mixture `--data-weights 1,2,2` = LAION : InstructPix2Pix : OpenImage.
DEFAULT_WEIGHTS: dict[str, float] = {"captions": 1.0, "editing": 2.0, "compositional": 2.0}

# Captions longer than this many SentencePiece tokens are skipped (laion2b_loader.py: 85 in the align stage,
# 128 when LAION feeds stage 3). Stage 1 keeps every caption that fits `max_tokens`.
DEFAULT_MAX_CAPTION_TOKENS: dict[str, int | None] = {"stage1": None, "stage2": 85, "stage3": 128}

_DATA_KEYS = {
    "batch_size",
    "num_workers",
    "sources",
    "max_tokens",
    "prefetch_factor",
    "pin_memory",
    "log_every",
    "mix_per_rank",
    "drop_entity_word_prob",
    "cutout_prob",
    "drop_input_caption_prob",
}


class DataConfigError(ConfigTypeError):
    """The `[data]` table is wrong: names the key and what was expected."""


@dataclass(frozen=True)
class SourceConfig:
    """One `[[data.sources]]` entry.

    shards: brace patterns / paths / folders of `.tar` files (a folder means every `*.tar` in it).
    min_image_side: images whose shorter side is smaller are skipped (the official LAION stage-3 loader used 384).
    max_caption_tokens: captions longer than this (SentencePiece tokens) are skipped; None = the stage default.
    """

    kind: str
    shards: tuple[str, ...]
    weight: float = 1.0
    name: str = ""
    min_image_side: int = 0
    max_caption_tokens: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Parsed `[data]` table. Probabilities are the official stage-3 sampling rules."""

    sources: tuple[SourceConfig, ...]
    num_workers: int = 2
    max_tokens: int = 2048
    prefetch_factor: int = 2
    pin_memory: bool = False
    log_every: int = 100
    # False: every rank draws the same source at a given step, so DDP/FSDP ranks run the same graph (a captions
    # batch does not touch the vision tower). True: each rank draws independently, as the official MixIterator.
    mix_per_rank: bool = False
    drop_entity_word_prob: float = 0.5
    cutout_prob: float = 0.5
    drop_input_caption_prob: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)


def _as_shard_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataConfigError(f"{where} shards = {value!r}: expected a brace pattern string or a non-empty list of paths")


def _probability(value: float, key: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise DataConfigError(f"[data] {key} = {value}: expected a probability in [0, 1]")
    return value


def check_batch_size(data_cfg: Mapping[str, Any]) -> int:
    """`[data] batch_size`: samples per rank per micro-step, required."""
    if "batch_size" not in data_cfg:
        raise DataConfigError("[data] batch_size is missing (samples per rank per micro-step)")
    value = check_value(data_cfg["batch_size"], int, "[data] batch_size")
    if value < 1:
        raise DataConfigError(f"[data] batch_size = {value}: expected at least 1")
    return value


def parse_data_config(stage: str, data_cfg: Mapping[str, Any]) -> DataConfig:
    """Validate the `[data]` table for `stage` (keys, value types, ranges), fill defaults (stage-3 weights 1:2:2,
    caption limits). Every error names the key."""
    if stage not in STAGE_KINDS:
        raise DataConfigError(f"unknown stage {stage!r}; the data loaders know {sorted(STAGE_KINDS)}")
    unknown = set(data_cfg) - _DATA_KEYS
    if unknown:
        log.warning("[data] keys %s are not used by the data loader (known: %s)", sorted(unknown), sorted(_DATA_KEYS))
    if "batch_size" in data_cfg:
        check_batch_size(data_cfg)
    raw_sources = data_cfg.get("sources")
    if not raw_sources:
        raise DataConfigError(
            f"[data] has no sources; add [[data.sources]] tables with kind (one of {STAGE_KINDS[stage]}) and shards"
        )
    if not isinstance(raw_sources, Sequence) or isinstance(raw_sources, str):
        raise DataConfigError(f"[data] sources = {raw_sources!r}: expected [[data.sources]] tables")
    sources: list[SourceConfig] = []
    for number, raw in enumerate(raw_sources):
        where = f"[[data.sources]] #{number}"
        if not isinstance(raw, Mapping):
            raise DataConfigError(f"{where} must be a table with kind and shards, got {raw!r}")
        if "shards" not in raw:
            raise DataConfigError(f"{where} has no shards (a webdataset brace pattern or a list of .tar paths)")
        values = check_table(SourceConfig, {**raw, "shards": _as_shard_list(raw["shards"], where)}, where)
        kind = values.get("kind")
        if kind not in STAGE_KINDS[stage]:
            raise DataConfigError(
                f"{where}: kind {kind!r} is not read by {stage} (expected one of {STAGE_KINDS[stage]})"
            )
        values.setdefault("weight", DEFAULT_WEIGHTS.get(kind, 1.0) if stage == "stage3" else 1.0)
        if values["weight"] < 0:
            raise DataConfigError(f"{where} weight = {values['weight']}: expected a weight >= 0")
        values.setdefault("max_caption_tokens", DEFAULT_MAX_CAPTION_TOKENS[stage])
        values["name"] = values.get("name") or f"{kind}{number}"
        sources.append(SourceConfig(**values))
    if sum(s.weight for s in sources) <= 0:
        raise DataConfigError("[data] sources all have weight 0; give at least one a positive weight")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataConfigError(f"[data] source names must be unique, got {names}")
    known = {k: v for k, v in data_cfg.items() if k not in unknown and k not in ("sources", "batch_size")}
    config = DataConfig(sources=tuple(sources), **check_table(DataConfig, known, "[data]"),
                        extra={k: data_cfg[k] for k in unknown})
    if config.num_workers < 0:
        raise DataConfigError(f"[data] num_workers = {config.num_workers}: expected 0 or more")
    for key in ("drop_entity_word_prob", "cutout_prob", "drop_input_caption_prob"):
        _probability(getattr(config, key), key)
    return replace(config, log_every=max(1, config.log_every))
