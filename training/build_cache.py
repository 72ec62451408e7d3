r"""Compute once what the frozen SD1.5 or SDXL parts would recompute at every training step, into cache files beside
the shards: stage 2, the CLIP text encoder's target of every caption (SDXL: both encoders' context and the pooled
vector); stage 3, the VAE posterior (mean, std) of every target image. A run with `[sd15] cache_outputs = true` then reads them instead (docs/training.md, "Caching the
frozen outputs"; file format in training/data/frozen_cache.py).

    python -m training.build_cache --config training/configs/stage3.toml sd15.path=models/stable-diffusion-v1-5
    torchrun --standalone --nproc_per_node 8 -m training.build_cache --config training/configs/stage3.toml

Give it the training run's config and overrides: each file records the frozen model's weights hash, the resolution,
dtype and precision it was computed with, and the trainer refuses a file whose record differs from the run's.
Shards whose file already matches are skipped (an interrupted build continues); a file built for another setup is
replaced only with --overwrite. Under torchrun every rank encodes its own share of the shards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from training.cli import progress, setup_logging

from . import distributed
from .data.config import parse_data_config
from .data.decode import SampleError, decode_image
from .data.features import TARGET_WHAT, caption_text, target_image_bytes
from .data.frozen_cache import (
    STAGE_KIND,
    CacheIdentity,
    FrozenCacheError,
    cache_path,
    content_key,
    read_identity,
    write_cache_file,
)
from .data.shards import RawSample, expand_shards, read_shard
from .data.transforms import target_tensor
from .train_config import TrainConfig, load_config

log = logging.getLogger(__name__)

TEXT_KINDS = ("clip_text", "sdxl_text")  # stage 2's kinds: keyed by the caption

Encoder = Callable[[list], list[dict[str, torch.Tensor]]]


def _encoder(cfg: TrainConfig, device: torch.device) -> tuple[CacheIdentity, Encoder, Callable[[str], bool]]:
    """The frozen part of `cfg.stage`, loaded exactly as the stage loads it: (identity, batch encoder, caption
    filter). The encoder maps a list of inputs (captions, or target tensors (3, R, R)) to per-sample outputs."""
    from .sd15 import clip_caption_filter, load_sd15, text_targets, vae_posterior
    from .stages.base import cache_identity, frozen_dtype
    from .train import autocast_dtype

    amp = autocast_dtype(cfg.parallel.precision)

    def autocast():  # the trainer computes these outputs under the same autocast (Trainer.autocast)
        return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()

    if STAGE_KIND[cfg.stage] == "clip_text":
        parts = load_sd15(cfg.sd15.path, device=device, dtype=frozen_dtype(cfg), text_encoder=True,
                          tokenizer_path=cfg.sd15.tokenizer)

        def encode_captions(captions: list) -> list[dict[str, torch.Tensor]]:
            with torch.inference_mode(), autocast():
                # {"clip_target": (B, 77, 768)}; SDXL: (B, 77, 2048) and "clip_pooled": (B, 1280)
                targets = text_targets(parts.text_encoder, parts.tokenizer, captions, device, parts.text_encoder_2,
                                       parts.tokenizer_2)
            return [dict(zip(targets, sample, strict=True)) for sample in zip(*targets.values(), strict=True)]

        # Captions the stage's loader drops (over 75 CLIP tokens) are never looked up: not encoded.
        return (cache_identity(cfg, parts.text_encoder, parts.tokenizer, parts.text_encoder_2, parts.tokenizer_2),
                encode_captions, clip_caption_filter(parts.tokenizer))

    parts = load_sd15(cfg.sd15.path, device=device, dtype=frozen_dtype(cfg), vae=True)

    def encode_targets(targets: list) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast():
            mean, std = vae_posterior(parts.vae, torch.stack(targets).to(device))  # (B, 4, R/8, R/8) each
        return [{"latent_mean": m, "latent_std": s} for m, s in zip(mean, std, strict=True)]

    return cache_identity(cfg, parts.vae), encode_targets, lambda caption: True


def _shards(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(shard path, source kind) of every existing shard of the config's sources, each once."""
    config = parse_data_config(cfg.stage, cfg.data)
    kinds: dict[str, str] = {}
    for source in config.sources:
        for path in expand_shards(source.shards):
            if kinds.setdefault(path, source.kind) != source.kind:
                raise ValueError(f"shard {path} is listed by sources of kinds {kinds[path]!r} and {source.kind!r}: a "
                                 "shard has one format (docs/data.md)")
    missing = [p for p in kinds if not Path(p).is_file()]
    if missing:
        log.warning("%d shard files do not exist (first: %s): no cache for them", len(missing), missing[0])
    return sorted((p, k) for p, k in kinds.items() if Path(p).is_file())


def encode_shard(url: str, source_kind: str, kind: str, resolution: int, encode: Encoder,
                 keep_caption: Callable[[str], bool], batch_size: int, counts: Counter) -> dict[str, dict]:
    """{content key: outputs} of every sample of one shard whose frozen-model input decodes, read as the loader reads
    it (features.caption_text / target_image_bytes, decode_image, target_tensor)."""
    entries: dict[str, dict] = {}
    keys: list[str] = []
    inputs: list = []

    def flush() -> None:
        for key, outputs in zip(keys, encode(inputs), strict=True):
            entries[key] = {name: t.detach().to("cpu").clone() for name, t in outputs.items()}
        keys.clear()
        inputs.clear()

    for index, key, members in read_shard(url, on_error=lambda reason, message: counts.update([reason])):
        raw = RawSample(key=key, url=url, members=members, uid=(0, 0, index))
        try:
            if kind in TEXT_KINDS:
                caption = caption_text(raw)
                if not caption or not keep_caption(caption):
                    counts["samples_not_needed"] += 1  # the loader drops it before any lookup
                    continue
                content = content_key(caption)
            else:
                data = target_image_bytes(source_kind, raw)
                content = content_key(data)
            if content in entries or content in keys:
                counts["samples_duplicate"] += 1  # same caption / same target image: one entry serves both
                continue
            value = caption if kind in TEXT_KINDS else target_tensor(
                decode_image(data, key, TARGET_WHAT[source_kind]), resolution)  # (3, R, R) in [-1, 1]
        except SampleError as err:
            counts[err.reason] += 1  # the loader skips it too
            continue
        keys.append(content)
        inputs.append(value)
        if len(keys) == batch_size:
            flush()
    if keys:
        flush()
    return entries


def build_cache(cfg: TrainConfig, batch_size: int = 16, overwrite: bool = False) -> dict[str, int]:
    """Write the cache files of this rank's share of the config's shards; returns the counts (summed over ranks)."""
    if cfg.stage not in STAGE_KIND:
        raise ValueError(f"stage = {cfg.stage!r}: only {sorted(STAGE_KIND)} have frozen outputs to cache")
    info = distributed.setup(cfg.run.device)
    shards = _shards(cfg)
    mine = shards[info.rank::info.world_size]
    identity, encode, keep_caption = _encoder(cfg, info.device)
    kind = identity.kind  # clip_text (SD1.5) or sdxl_text (SDXL) for stage 2, vae_posterior for stage 3
    counts: Counter = Counter()
    for url, source_kind in progress(mine, desc=f"{kind} cache (shards)"):
        path = cache_path(url, kind)
        if path.is_file() and not overwrite:
            diffs = read_identity(path).differences(identity)
            if not diffs:
                counts["shards_existing"] += 1
                continue
            raise FrozenCacheError(f"{path} exists and was built for another setup ({'; '.join(diffs)}): pass "
                                   "--overwrite to replace it")
        entries = encode_shard(url, source_kind, kind, cfg.sd15.resolution, encode, keep_caption, batch_size, counts)
        write_cache_file(path, identity, entries)
        counts["shards_written"] += 1
        counts["entries"] += len(entries)
    log.info("rank %d: %s cache of %d shards: %s", info.rank, kind, len(mine), dict(counts))
    counts["shards"] = len(mine)
    # A collective: when it returns, every rank has written its files (a trainer started next finds them all).
    return dict(sum((Counter(c) for c in distributed.all_gather_object(dict(counts))), Counter()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.build_cache", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--config", required=True,
                        help="the stage-2 or stage-3 training config (TOML) whose shards and frozen model to cache")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per frozen-model forward (default 16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild every file, also those already built (for this or another setup)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, as given to the training run")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    try:
        counts = build_cache(cfg, args.batch_size, args.overwrite)
    except BaseException:
        distributed.abort()
        raise
    distributed.teardown()
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(counts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
