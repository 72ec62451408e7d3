"""The layout stage's `[data]` table, typed: every key, its type and default, checked when the config is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ...typed_tables import ConfigTypeError, from_table

SOURCES = ("procedural", "coco_stuff", "shards")


def _typed_data_table(cls, data: dict):
    """The `[data]` table as `cls` (a single shard path may be given as a string); batch_size must be set."""
    data = dict(data)
    if isinstance(data.get("shards"), str):
        data["shards"] = [data["shards"]]
    config = from_table(cls, data, "[data]")
    if config.batch_size < 1:
        raise ConfigTypeError(f"[data] batch_size = {config.batch_size}: expected at least 1 (samples per rank "
                              "per micro-step)")
    return config


@dataclass(frozen=True)
class LayoutDataConfig:
    batch_size: int = 0               # required: samples per rank per micro-step
    source: str = "procedural"        # procedural | coco_stuff | shards
    size: int = 64                    # label-map side
    train_scenes: int = 20000         # procedural
    seed: int = 0                     # procedural data seed; held-out scenes use seed + 1
    captions: str = ""                # coco_stuff: captions json
    labels: str = ""                  # coco_stuff: stuffthingmaps folder
    limit: int | None = None          # coco_stuff: at most this many images
    shards: tuple[str, ...] = ()      # shards: layout tar files
    val_scenes: int = 200             # held-out procedural scenes scored at every [sample] step
    final_eval_scenes: int = 0        # after the export, both planners scored on this many held-out scenes
    p_full_mask: float = 0.3          # layout_losses weights
    token_weight: float = 0.5
    edge_weight: float = 0.5

    @classmethod
    def from_table(cls, data: dict) -> LayoutDataConfig:
        config = _typed_data_table(cls, data)
        if config.source not in SOURCES:
            raise ConfigTypeError(f"[data] source = {config.source!r}: expected procedural | coco_stuff | shards")
        for key in {"coco_stuff": ("captions", "labels"), "shards": ("shards",)}.get(config.source, ()):
            if not getattr(config, key):
                raise ConfigTypeError(f"[data] source = {config.source} needs [data] {key}")
        return config

    @property
    def loss_weights(self) -> dict[str, float]:
        """The keyword arguments of kosmos_g_core.layout.model.layout_losses."""
        return {"p_full_mask": self.p_full_mask, "token_weight": self.token_weight, "edge_weight": self.edge_weight}


@dataclass(frozen=True)
class ControlNetDataConfig:
    """The `[data]` table of the ControlNet stage: layout shards with pictures (training.layout_world.shards)."""

    batch_size: int = 0                       # required: samples per rank per micro-step
    shards: tuple[str, ...] = ()              # layout tar files with {key}.png pictures
    palette: str = "coco_panoptic_133"        # the hint's colours: control_v11p_sd15_seg's COCO protocol
    caption_dropout: float = 0.1              # share of empty captions, so guidance works at sampling

    @classmethod
    def from_table(cls, data: dict) -> ControlNetDataConfig:
        config = _typed_data_table(cls, data)
        if not config.shards:
            raise ConfigTypeError("[data] shards is empty: the ControlNet stage needs layout shards with pictures "
                                  "(write them with python -m training.layout_world.shards)")
        from kosmos_g_core.layout.palettes import PALETTES

        if config.palette not in PALETTES:
            raise ConfigTypeError(f"[data] palette = {config.palette!r}: expected one of {sorted(PALETTES)}")
        if not 0.0 <= config.caption_dropout < 1.0:
            raise ConfigTypeError(f"[data] caption_dropout = {config.caption_dropout}: expected 0 <= p < 1")
        return config
