"""The Stage base class every training stage inherits, the STAGES registry, and what the KOSMOS-G stages share.

A stage says what to build, what trains, what data it reads, how the loss is computed and what it exports; the
trainer (training/train.py) owns everything else (distribution, precision, accumulation, checkpoints, logging).
The contract is explicit, as torchtitan's train spec: every hook is a method of `Stage` with a default (or one that
says it must be written), and each hook gets what it needs as arguments (the config, the model that `build_model`
returned), so a stage keeps no state between hooks and the trainer never asks a stage what it has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..distributed import unwrap
from ..sd15 import load_sd15

log = logging.getLogger(__name__)


class ResumableLoader(Protocol):
    """What `Stage.build_dataloader` returns: endless batches with an exact, resumable position and skip counters."""

    stats: Mapping[str, int]

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Stage:
    """One training stage. `register(name)` names it; the trainer instantiates it without arguments and calls, in
    order: check_config, build_model, set_activation_checkpointing (when asked), shard_units /
    fsdp_forward_methods or find_unused_parameters (wrapping), trainable_parameters, build_dataloader, then per
    micro-batch loss and count, sample every [sample] every steps, and export at the end."""

    name: str = ""
    # DDP: True when some trainable parameters get no gradient in some batches (e.g. image-free batches).
    find_unused_parameters: bool = False
    # FSDP2: methods other than forward that run the model (sampling), so parameters are gathered for them too.
    fsdp_forward_methods: tuple[str, ...] = ()
    # True when the stage reads the frozen-output cache under `[sd15] cache_outputs` (training/data/frozen_cache.py).
    caches_frozen_outputs: bool = False

    def check_config(self, cfg) -> object:
        """The stage's own tables: keys, value types and ranges, before anything is built (raise to refuse)."""
        return None

    def build_model(self, cfg, device: torch.device) -> nn.Module:
        """The module the trainer wraps; `forward(batch)` -> (loss, metrics) unless `loss` says otherwise."""
        raise NotImplementedError(f"stage {self.name!r} must implement build_model")

    def set_activation_checkpointing(self, model: nn.Module, cfg, enabled: bool) -> None:
        """Recompute activations in backward (`[model] activation_checkpointing = true`), or stop; stages without it
        train unchanged."""

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """FSDP2 shard units (transformer layers); none = the whole model is one unit."""
        return []

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def build_dataloader(self, cfg, model: nn.Module, rank: int, world_size: int) -> ResumableLoader:
        """This rank's batches for `model` (as built by build_model, possibly wrapped)."""
        raise NotImplementedError(f"stage {self.name!r} must implement build_dataloader")

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        loss, metrics = model(batch)
        return loss, {k: float(v) for k, v in metrics.items()}

    def count(self, batch: dict) -> tuple[int, int]:
        """(samples, tokens) of a batch, for throughput: by default the first tensor's batch size, no tokens."""
        first = next((v for v in batch.values() if torch.is_tensor(v)), None)
        return (int(first.shape[0]) if first is not None else 0), 0

    def sample(self, model: nn.Module, step: int, writer, cfg) -> None:
        """Every `[sample] every` steps: write samples / held-out scores to `writer`. Default: nothing."""

    def export(self, model: nn.Module, path, cfg) -> None:
        """The inference file at the end of the run (collective under FSDP; rank 0 writes)."""
        raise NotImplementedError(f"stage {self.name!r} must implement export")


# name -> Stage class (instantiated without arguments by the trainer).
STAGES: dict[str, type[Stage]] = {}


def register(name: str):
    """Class decorator: `@register("stage2") class Stage2(Stage)` adds it to STAGES."""

    def deco(cls: type) -> type:
        if not issubclass(cls, Stage):
            raise TypeError(f"{cls.__name__} must inherit training.stages.base.Stage")
        cls.name = name
        STAGES[name] = cls
        return cls

    return deco


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts / lists / tuples moved to `device`; everything else untouched."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj


class StageModule(nn.Module):
    """What DDP/FSDP wrap: `kosmos` (a KosmosG, registered) plus frozen helpers (SD1.5 parts) kept OUT of the
    module tree, so they are not broadcast by DDP, sharded by FSDP or written into training checkpoints (they are
    reloaded from the user's files). `forward(batch)` is the whole loss computation -> (loss, metrics)."""

    stage_name = ""  # written into the export's metadata (`trained_stage`)

    def __init__(self, kosmos: nn.Module):
        super().__init__()
        self.kosmos = kosmos
        object.__setattr__(self, "frozen", {})

    def add_frozen(self, name: str, module: Any) -> None:
        self.frozen[name] = module

    def train(self, mode: bool = True) -> StageModule:
        super().train(mode)
        for m in self.frozen.values():
            if isinstance(m, nn.Module):
                m.eval()  # frozen parts always run in eval mode
        return self

    @property
    def device(self) -> torch.device:
        return next(self.kosmos.parameters()).device


# -- building the KOSMOS-G model of a stage ---------------------------------------------------------------------------
def aligner_preset(cfg, mllm_dim: int, sdxl: bool = False):
    """`[model] aligner_preset`'s AlignerNet, or when "" the one that fits: official sizes for a 2048-wide MLLM, else
    tiny; with SDXL's heads (`sdxl` / `tiny_sdxl`) when the frozen base is SDXL."""
    from kosmos_g_core.config import PRESETS

    name = cfg.model.aligner_preset or ("official" if mllm_dim == 2048 else "tiny")
    if not cfg.model.aligner_preset and sdxl:
        name = {"official": "sdxl", "tiny": "tiny_sdxl"}[name]
    if name not in PRESETS:
        raise ValueError(f"[model] aligner_preset = {name!r}: unknown; expected one of {sorted(PRESETS)}")
    return PRESETS[name].aligner


def _set_aligner(model, aligner_cfg) -> None:
    """Replace model.aligner by one built from `aligner_cfg`, keeping every tensor the old one shares with it
    (so M survives adding or dropping N). New tensors keep their fresh initialisation."""
    from kosmos_g_core.aligner import AlignerNet

    old = model.aligner
    new = AlignerNet(aligner_cfg, model.config.mllm.dim, dtype=torch.float32)
    if old is not None:
        result = new.load_state_dict(old.state_dict(), strict=False)
        if result.missing_keys:
            log.info("AlignerNet: %d tensors start from random init (e.g. %s)", len(result.missing_keys),
                     result.missing_keys[0])
    else:
        log.info("the init checkpoint has no AlignerNet: starting it from random init (%s)", aligner_cfg)
    model.aligner = new
    model.config = replace(model.config, aligner=aligner_cfg)


def build_kosmos(cfg, device: torch.device, *, aligner: str, sdxl: bool = False):
    """The KosmosG of a stage, fp32 (master weights), tokenizer attached.

    aligner: "keep" (whatever the init has), "encoder" (M only; created if absent), "with_decoder" (M and N).
    `[model] init` names a pack .safetensors (e.g. a Kosmos-2 conversion or a previous stage's export); when empty
    the model starts from random weights of `[model] preset` with the tokenizer files of `[model] tokenizer`.
    sdxl: the frozen base is SDXL, so an AlignerNet created here gets SDXL's heads (unless `[model] aligner_preset`
    names one).
    """
    from pathlib import Path

    from kosmos_g_core.checkpoint import load_checkpoint
    from kosmos_g_core.config import PRESETS
    from kosmos_g_core.model import KosmosG
    from kosmos_g_core.tokenizer import KosmosTokenizer

    if cfg.model.init:
        model = load_checkpoint(cfg.model.init, dtype=torch.float32, device="cpu")
    else:
        if cfg.model.preset not in PRESETS:
            raise ValueError(f"[model] preset = {cfg.model.preset!r}: unknown; expected one of {sorted(PRESETS)}")
        if not cfg.model.tokenizer:
            raise ValueError("[model] init is empty (random init), so [model] tokenizer must name the folder with "
                             "sentencepiece.bpe.model and dict.txt")
        folder = Path(cfg.model.tokenizer)
        model = KosmosG(PRESETS[cfg.model.preset], dtype=torch.float32)
        model.tokenizer = KosmosTokenizer.from_files(folder / "sentencepiece.bpe.model", folder / "dict.txt")
    tokenizer = model.tokenizer
    wanted = stage_kosmos_config(cfg, model.config, aligner, sdxl=sdxl).aligner
    if model.config.aligner != wanted:
        _set_aligner(model, wanted)
    model.tokenizer = tokenizer
    return model.to(device)


def stage_kosmos_config(cfg, config, aligner: str, sdxl: bool = False):
    """The architecture a stage trains, from the init model's `config`: AlignerNet as `aligner` asks ("keep",
    "encoder" = M only, "with_decoder" = M and N), created at `[model] aligner_preset` sizes when absent (with SDXL's
    heads when `sdxl`, the frozen base being SDXL, and the preset is left to choose). The one rule build_kosmos and
    the memory planner (training/memory_plan.py) share."""
    if aligner == "keep":
        return config
    base = config.aligner or aligner_preset(cfg, config.mllm.dim, sdxl)
    return replace(config, aligner=replace(base, with_decoder=(aligner == "with_decoder")))


def _describe_width(width: int, pooled: int | None) -> str:
    return f"{width}-wide" + (f" with a {pooled}-wide pooled vector" if pooled is not None else "")


def check_condition_width(kosmos, width: int, what: str, path, pooled: int | None = None) -> None:
    """AlignerNet M's output width must be the frozen base's context width (768 for SD1.5, 2048 for SDXL; a toy base
    may be narrower), and its pooled head's width the base's pooled width (SDXL's 1280; SD1.5 has none): say so
    before the first step rather than as a shape error deep in the U-Net or the loss, or a KeyError on SDXL's
    `text_embeds`."""
    ours, our_pooled = kosmos.config.condition_shape[1], kosmos.config.pooled_dim
    if ours == width and our_pooled == pooled:
        return
    message = (f"the KOSMOS-G model's AlignerNet outputs {_describe_width(ours, our_pooled)} conditioning but {what} "
               f"of [sd15] path {path} is {_describe_width(width, pooled)}")
    if (our_pooled is None) != (pooled is None):
        base, other = ("an SDXL", "SDXL") if pooled is not None else ("an SD1.5", "SD1.5")
        raise ValueError(f"{message}: {base} base needs an AlignerNet made for {other} (one with a pooled head for "
                         "SDXL, none for SD1.5). Start stage 2 from a file without AlignerNet (the preset then follows "
                         "the base, or set [model] aligner_preset), and stage 3 from that base's stage-2 export")
    raise ValueError(f"{message}: use a model and a base folder of the same width")


def select_trainable(kosmos: nn.Module, prefixes: Iterable[str]) -> int:
    """requires_grad = True exactly for parameters whose name starts with one of `prefixes`; returns the count."""
    prefixes = tuple(prefixes)
    n = 0
    for name, p in kosmos.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"no parameter of the model starts with any of {list(prefixes)}: check [model] trainable")
    return n


def last_vit_block_prefixes(kosmos) -> list[str]:
    """`--no-freeze-layer resblocks.23,ln_post` of the official stage 3, for any depth."""
    last = kosmos.config.vision.layers - 1
    return [f"img_model.visual.transformer.resblocks.{last}.", "img_model.visual.ln_post."]


def layer_units(module: nn.Module) -> list[nn.Module]:
    """Every transformer layer of the model's LayerStacks (MLLM, ViT, AlignerNet): the FSDP2 shard units."""
    from kosmos_g_core.layers import LayerStack

    return [layer for m in module.modules() if isinstance(m, LayerStack) for layer in m]


def frozen_dtype_name(cfg) -> str:
    """`[sd15] dtype`, where `auto` follows `[parallel] precision`: fp32 | bf16 | fp16."""
    name = cfg.sd15.dtype
    if name == "auto":
        name = cfg.parallel.precision if cfg.parallel.precision in ("bf16", "fp16") else "fp32"
    return name


def frozen_dtype(cfg) -> torch.dtype:
    """The dtype of the frozen SD1.5 parts (`frozen_dtype_name`)."""
    from kosmos_g_core.dtypes import dtype_from_name

    return dtype_from_name(frozen_dtype_name(cfg), "[sd15] dtype")


def cache_identity(cfg, frozen: nn.Module, tokenizer=None, text_encoder_2: nn.Module | None = None,
                   tokenizer_2=None):
    """The identity a frozen-output cache file must carry to be used by this run (and that `training.build_cache`
    writes): the frozen part's weights hash, the CLIP tokenizer (stage 2), the input transform, the target resolution
    (stage 3), the frozen dtype and the autocast precision. One owner for the trainer and the builder.

    SDXL's stage 2 passes its second text encoder and tokenizer too: the identity is then of kind `sdxl_text` and
    hashes both encoders (as one state dict, `text_encoder.*` and `text_encoder_2.*`) and both tokenizers."""
    import hashlib

    from training.data.frozen_cache import CacheIdentity, cache_kind, tokenizer_digest, weights_digest
    from training.data.transforms import TARGET_TRANSFORM
    from training.sd15 import CLIP_IDS_RULE, SDXL_TEXT_IDS_RULE

    sdxl = text_encoder_2 is not None
    kind = cache_kind(cfg.stage, sdxl)
    text = kind != "vae_posterior"
    if sdxl:
        weights = weights_digest(nn.ModuleDict({"text_encoder": frozen, "text_encoder_2": text_encoder_2}))
        digest = hashlib.sha256((tokenizer_digest(tokenizer) + tokenizer_digest(tokenizer_2)).encode()).hexdigest()
        rule = SDXL_TEXT_IDS_RULE
    else:
        weights = weights_digest(frozen)
        digest = tokenizer_digest(tokenizer) if text else ""
        rule = CLIP_IDS_RULE if text else TARGET_TRANSFORM
    return CacheIdentity(kind=kind, weights=weights, tokenizer=digest, transform=rule,
                         resolution=0 if text else cfg.sd15.resolution, dtype=frozen_dtype_name(cfg),
                         precision=cfg.parallel.precision, model=str(cfg.sd15.path))


class KosmosStage(Stage):
    """Shared parts of the three KOSMOS-G stages: the model is a StageModule around a KosmosG."""

    find_unused_parameters = True    # image-free batches skip the vision tower and connector
    default_trainable: tuple[str, ...] = ()
    aligner_mode = "keep"            # build_kosmos(aligner=...): "keep" | "encoder" | "with_decoder"
    sd15_parts: tuple[str, ...] = ()  # frozen SD1.5 parts load_sd15 loads: "text_encoder", "unet", "vae"

    def build_model(self, cfg, device: torch.device) -> StageModule:
        from ..sd15 import SDXL, base_kind

        sdxl = bool(self.sd15_parts) and base_kind(cfg.sd15.path) == SDXL
        if self.sd15_parts:
            log.info("frozen base: %s (%s)", "SDXL" if sdxl else "SD1.5", cfg.sd15.path)
        kosmos = build_kosmos(cfg, device, aligner=self.aligner_mode, sdxl=sdxl)
        parts = load_sd15(cfg.sd15.path, device=device, dtype=frozen_dtype(cfg), tokenizer_path=cfg.sd15.tokenizer,
                          **dict.fromkeys(self.sd15_parts, True)) if self.sd15_parts else None
        return self.assemble(cfg, kosmos, parts)

    def assemble(self, cfg, kosmos, parts) -> StageModule:
        """The stage module around `kosmos` (built as `aligner_mode` says) and the frozen SD1.5 `parts` (an
        SD15Parts with `sd15_parts`, or None), trainable parameters selected. build_model passes loaded weights; the
        memory planner passes the same architecture built without weights (training/memory_plan.py)."""
        raise NotImplementedError(f"stage {self.name!r} must implement assemble")

    def trainable_prefixes(self, cfg, kosmos) -> list[str]:
        return list(cfg.model.trainable) or list(self.default_trainable)

    def finish_model(self, cfg, module: StageModule) -> StageModule:
        n = select_trainable(module.kosmos, self.trainable_prefixes(cfg, module.kosmos))
        total = sum(p.numel() for p in module.kosmos.parameters())
        log.info("%s: %.1fM of %.1fM KOSMOS-G parameters trainable", self.name, n / 1e6, total / 1e6)
        return module.train()

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return layer_units(unwrap(model).kosmos)

    def set_activation_checkpointing(self, model: nn.Module, cfg, enabled: bool) -> None:
        unwrap(model).kosmos.set_gradient_checkpointing(enabled)

    def check_config(self, cfg) -> None:
        """The stage's own tables ([data], [checkpoint] export_dtype; stage 3 also [semantic])."""
        from kosmos_g_core.dtypes import dtype_from_name
        from training.data.config import check_batch_size, parse_data_config

        check_batch_size(cfg.data)
        parse_data_config(self.name, cfg.data)
        dtype_from_name(cfg.checkpoint.export_dtype, "[checkpoint] export_dtype")

    def build_dataloader(self, cfg, model: nn.Module, rank: int, world_size: int):
        """The KOSMOS-G loader with the model's own tokenizer and image size."""
        from training.data import build_dataloader
        from training.data.config import check_batch_size

        module = unwrap(model)
        return build_dataloader(
            self.name, dict(cfg.data), module.kosmos.tokenizer, image_size=module.kosmos.config.vision.image_size,
            target_size=self.target_size(cfg), batch_size=check_batch_size(cfg.data), rank=rank,
            world_size=world_size, seed=cfg.run.seed, caption_filter=self.caption_filter(module),
            frozen_cache=self.frozen_cache(cfg, module))

    def frozen_cache(self, cfg, module: StageModule):
        """The frozen-output cache the loader reads (`[sd15] cache_outputs`), or None: recompute every step."""
        return None

    def target_size(self, cfg) -> int:
        """Side of the target images the loader prepares (0 = none)."""
        return 0

    def caption_filter(self, module: StageModule):
        """A predicate on captions the loader applies (None = keep all)."""
        return None

    def count(self, batch: dict) -> tuple[int, int]:
        tokens = batch["tokens"]
        return int(tokens.shape[0]), int(tokens.ne(1).sum())

    def export(self, model: nn.Module, path, cfg) -> None:
        from kosmos_g_core.dtypes import dtype_from_name

        export_kosmos(model, path, dtype=dtype_from_name(cfg.checkpoint.export_dtype, "[checkpoint] export_dtype"),
                      drop_decoder=True)


def export_kosmos(model: nn.Module, path, *, dtype: torch.dtype | None, drop_decoder: bool) -> None:
    """Write the pack's single .safetensors (core save_checkpoint) from the stage module. Collective under FSDP
    (parameters are gathered to rank 0, which writes). AlignerNet N is dropped unless asked: the loader node and
    stage 3 only need M."""
    import torch.distributed as dist

    from kosmos_g_core.checkpoint import save_checkpoint

    from ..checkpoint import full_model_state_dict

    module = unwrap(model)
    kosmos = module.kosmos
    full = full_model_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    sd = {k[len("kosmos."):]: v for k, v in full.items() if k.startswith("kosmos.")}
    config = kosmos.config
    if drop_decoder and config.aligner is not None and config.aligner.with_decoder:
        sd = {k: v for k, v in sd.items() if not k.startswith(("aligner.decoder", "aligner.decoder_"))}
        config = config.with_decoder(False)
    save_checkpoint(path, sd, kosmos.tokenizer, config=config, dtype=dtype,
                    metadata={"trained_stage": module.stage_name})
    log.info("exported %s (%s)", path, dtype)
