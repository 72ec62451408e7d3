"""The trainer's configuration: one TOML file per stage plus dotted command-line overrides.

`load_config(path, ["optim.lr=1e-4", "data.batch_size=8"])` reads the TOML, applies the overrides (values parsed as
TOML, so `1e-4`, `true`, `[0.9, 0.98]` and `"text"` work; a bare word stays a string) and returns a frozen
`TrainConfig`. Unknown keys in the trainer's own tables are errors that name the table and the valid keys; the
`[data]` and `[semantic]` tables are passed through untouched to their owners (data loader, semantic supervision).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .optim import OptimConfig
from .typed_tables import from_table

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    grad_accum: int = 1              # micro-batches per optimiser step
    device: str = "auto"             # auto | cpu | cuda
    stop_after: int = 0              # end this invocation after N optimiser steps (checkpointed; for time-limited
                                     # jobs: resume with checkpoint.resume = "latest"); 0 = run to max_steps


@dataclass(frozen=True)
class ModelConfig:
    init: str = ""                   # pack .safetensors to start from; "" = random init of `preset`
    preset: str = "official"         # kosmos_g_core.config.PRESETS key, used when init is ""
    tokenizer: str = ""              # folder with sentencepiece.bpe.model + dict.txt (needed when init is "")
    aligner_preset: str = ""         # AlignerNet config when init has none ("" = the preset of init's size, with
                                     # SDXL's heads when [sd15] path is an SDXL base)
    trainable: tuple[str, ...] = ()  # parameter-name prefixes; () = the stage's paper default
    activation_checkpointing: bool = True
    cond_dropout: float = 0.1        # stage 3: share of conditions replaced by the null embedding (CFG)
    pooled_weight: float = 1.0       # stage 2 against SDXL: weight of the pooled-vector MSE in the loss
    mention_tokens: bool = True      # layout stage: feed the parser's (class, count) tokens to the model; false
                                     # measures what the model learns from the caption words alone


@dataclass(frozen=True)
class ParallelConfig:
    strategy: str = "ddp"            # ddp | fsdp
    precision: str = "bf16"          # bf16 (autocast, fp32 master weights) | fp16 (autocast + GradScaler) | fp32
    check_replicas: bool = False     # at the end, compare parameter checksums across ranks (debug)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 2000                # optimiser steps between training-state checkpoints (0 = only at the end)
    keep: int = 3                    # how many step_* folders to keep
    resume: str = ""                 # "" | "latest" | path of a step_* folder
    export_path: str = ""            # pack .safetensors written at the end ("" = <out_dir>/export.safetensors)
    export_dtype: str = "fp16"       # fp16 | bf16 | fp32


@dataclass(frozen=True)
class LogConfig:
    every: int = 10                  # optimiser steps between log lines / TensorBoard points
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "kosmos-g"
    progress: str = "auto"           # auto (tqdm on a terminal, else log lines) | tqdm | lines


@dataclass(frozen=True)
class SD15Config:
    path: str = ""                   # diffusers SD1.5 folder, or a single-file SD1.5 .safetensors/.ckpt
    tokenizer: str = ""              # CLIP BPE folder (vocab.json + merges.txt); "" = <path>/tokenizer
    dtype: str = "auto"              # frozen SD1.5 weights: auto (= compute dtype) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = True   # U-Net activation checkpointing (stage 3)
    resolution: int = 512            # stage 3 target images (Resize short side + CenterCrop), as SD1.5
    cache_outputs: bool = False      # stages 2/3: read the frozen CLIP-text targets / VAE posteriors from the cache
                                     # files `python -m training.build_cache` writes beside the shards


@dataclass(frozen=True)
class SampleConfig:
    every: int = 0                   # optimiser steps between sample grids (0 = never)
    prompts: tuple[Any, ...] = ()    # strings, or tables {text = "<i> in the snow", images = ["dog.jpg"]}
    steps: int = 25
    guidance: float = 6.0
    resolution: int = 0              # 0 = [sd15] resolution
    seed: int = 0


_SECTIONS = {"run": RunConfig, "model": ModelConfig, "optim": OptimConfig, "parallel": ParallelConfig,
             "checkpoint": CheckpointConfig, "log": LogConfig, "sd15": SD15Config, "sample": SampleConfig}
_PASSTHROUGH = ("data", "semantic")


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sd15: SD15Config = field(default_factory=SD15Config)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: dict = field(default_factory=dict)
    semantic: dict = field(default_factory=dict)
    source: str = ""                 # the TOML file it came from

    def to_dict(self) -> dict:
        d = {"stage": self.stage}
        for name in _SECTIONS:
            d[name] = _plain(dataclasses.asdict(getattr(self, name)))
        d["data"] = copy.deepcopy(self.data)
        d["semantic"] = copy.deepcopy(self.semantic)
        return d


def _plain(obj: Any) -> Any:
    """Tuples -> lists so the dict serialises as TOML/JSON."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` sets raw["a"]["b"]["c"]; tables are created as needed."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form dotted.key=value (e.g. optim.lr=1e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return raw


def config_from_dict(raw: dict, source: str = "") -> TrainConfig:
    if "stage" not in raw:
        raise ValueError(f"{source or 'config'}: missing top-level key `stage` (stage1 | stage2 | stage3 | layout | controlnet)")
    unknown = sorted(set(raw) - set(_SECTIONS) - set(_PASSTHROUGH) - {"stage"})
    if unknown:
        raise ValueError(f"{source or 'config'}: unknown table(s) {unknown}; "
                         f"valid: stage, {', '.join(list(_SECTIONS) + list(_PASSTHROUGH))}")
    kwargs: dict[str, Any] = {"stage": raw["stage"], "source": source}
    for name, cls in _SECTIONS.items():
        kwargs[name] = from_table(cls, raw.get(name, {}), f"[{name}]")
    for name in _PASSTHROUGH:
        kwargs[name] = copy.deepcopy(raw.get(name, {}))
    return TrainConfig(**kwargs)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} not found (expected a TOML file, e.g. training/configs/stage2.toml)")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return config_from_dict(apply_overrides(raw, list(overrides)), source=str(path))


def save_resolved(cfg: TrainConfig, out_dir: Path) -> Path:
    """Write the resolved config (after overrides) as JSON into the run folder; JSON because it is lossless for
    every value TOML can hold and needs no writer package. It loads back with `config_from_dict(json.load(f))`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.resolved.json"
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path
