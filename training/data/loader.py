"""The stateful, deterministic, endless data loader of every stage.

How the batch sequence of one rank is defined (it is the same in an uninterrupted and in a resumed run):

* step ``k`` draws its source with :class:`SourceSchedule` (a pure function of seed and k);
* the rank has ``W = max(1, num_workers)`` *logical workers*; step ``k`` is produced by logical worker ``k % W``
  from its own share of the shards (see :mod:`training.data.shards`), ``batch_size`` usable samples of the drawn
  source taken in order (corrupt or filtered samples are skipped and counted);
* every batch carries the producing worker's position (per source: epoch, shard, sample) and its skip counters.
  The loader keeps the position of the last batch the trainer actually *consumed* from each logical worker, so
  ``state_dict()`` is exact even though workers prefetch ahead.

Resuming re-creates the workers from those positions: a worker re-opens its current shard and skips the samples
it had read (tar members are read, not decoded), so the cost is at most one partial shard per worker and source.
The torch DataLoader hands out batches round-robin starting at worker 0, so physical worker ``p`` of a loader that
starts at step ``K`` plays logical worker ``(K + p) % W``.

The batch sequence depends on (seed, rank, world_size, num_workers, the shard lists); resuming with a different
world size or worker count cannot be exact: the loader then warns and starts every stream at a fresh epoch.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kosmos_g_core.tokenizer import KosmosTokenizer

from .collate import collate
from .config import DataConfig, parse_data_config
from .decode import SampleError
from .features import FeatureContext, Features, sample_features
from .frozen_cache import FrozenCache
from .mixing import SourceSchedule
from .shards import EMPTY_EPOCHS_BEFORE_ERROR, ShardError, ShardPosition, ShardReader, expand_shards
from .stats import SkipStats, merge_counts

log = logging.getLogger(__name__)

STATE_FORMAT = "kosmos_g_data"
STATE_VERSION = 1


@dataclass
class LoaderPlan:
    """Everything a data worker needs; picklable (the tokenizer travels as its file bytes)."""

    stage: str
    config: DataConfig
    shards: list[list[str]]  # expanded shard paths per source
    tokenizer: KosmosTokenizer
    image_size: int
    target_size: int
    batch_size: int
    rank: int
    world_size: int
    seed: int
    caption_filter: Callable[[str], bool] | None = None
    frozen_cache: FrozenCache | None = None

    @property
    def workers_per_rank(self) -> int:
        return max(1, self.config.num_workers)

    def context(self) -> FeatureContext:
        return FeatureContext(
            stage=self.stage,
            tokenizer=self.tokenizer,
            config=self.config,
            image_size=self.image_size,
            target_size=self.target_size,
            caption_filter=self.caption_filter,
        )

    def schedule(self) -> SourceSchedule:
        weights = [s.weight for s in self.config.sources]
        return SourceSchedule(weights, self.seed, rank=self.rank if self.config.mix_per_rank else None)

    def __getstate__(self) -> dict[str, Any]:
        # Only used with the "spawn" start method (fork copies the process): a SentencePiece processor is not
        # guaranteed to pickle, its file bytes are.
        state = dict(self.__dict__)
        tok = state.pop("tokenizer")
        state["_tokenizer_bytes"] = (tok.spm_bytes, tok.dict_bytes)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        spm_bytes, dict_bytes = state.pop("_tokenizer_bytes")
        self.__dict__.update(state)
        self.tokenizer = KosmosTokenizer.from_bytes(spm_bytes, dict_bytes)


class _SourceStream:
    """Usable samples (as features) of one source for one logical worker, in a fixed order."""

    def __init__(self, plan: LoaderPlan, index: int, reader: int, position: ShardPosition, stats: SkipStats) -> None:
        self.plan = plan
        self.index = index
        self.source = plan.config.sources[index]
        self.stats = stats
        self.context = plan.context()
        self.reader = ShardReader(
            plan.shards[index],
            seed=plan.seed,
            source_index=index,
            reader=reader,
            num_readers=plan.world_size * plan.workers_per_rank,
            position=position,
            on_error=stats.add,
            name=self.source.name,
        )
        self._samples = iter(self.reader)
        self._epoch_of_last_good = position.epoch

    def next(self) -> Features:
        while True:
            raw = next(self._samples)
            if self.reader.position.epoch - self._epoch_of_last_good > EMPTY_EPOCHS_BEFORE_ERROR:
                raise ShardError(
                    f"source {self.source.name!r}: {EMPTY_EPOCHS_BEFORE_ERROR} whole epochs gave no usable sample "
                    f"(skipped so far: {self.stats.counts}); check the shards and the filters "
                    "(max_caption_tokens, min_image_side, caption_filter)"
                )
            rng = random.Random(f"sample/{self.plan.seed}/{self.index}/{raw.uid}")
            try:
                features = sample_features(self.context, self.source, raw, rng)
            except SampleError as err:
                self.stats.add(err.reason, f"{raw.url}: {err}")
                continue
            except Exception as err:  # an unexpected decoder failure on one sample must not stop training
                if self.stats.counts.get("skipped_error", 0) == 0:
                    log.exception("unexpected error on sample %r of %s", raw.key, raw.url)
                self.stats.add("skipped_error", f"{raw.url}: sample {raw.key!r}: {type(err).__name__}: {err}")
                continue
            if self.plan.frozen_cache is not None:
                # Outside the per-sample error handling on purpose: a missing or mismatched cache entry means a
                # stale cache, which must stop the run rather than skip samples.
                features.frozen = self.plan.frozen_cache.lookup(raw.url, features.cache_key, raw.key)
            self._epoch_of_last_good = self.reader.position.epoch
            return features


class _BatchProducer:
    """One logical worker: makes the batches of steps k with k % W == logical."""

    def __init__(self, plan: LoaderPlan, logical: int, state: Mapping[str, Any] | None) -> None:
        self.plan = plan
        self.logical = logical
        state = state or {}
        self.stats = SkipStats(
            plan.config.log_every, state.get("stats"), where=f"[data rank {plan.rank} worker {logical}] "
        )
        saved = state.get("positions", {})
        self.positions = {
            i: ShardPosition.from_dict(saved[str(i)]) if str(i) in saved else ShardPosition()
            for i in range(len(plan.config.sources))
        }
        self.streams: dict[int, _SourceStream] = {}
        self.schedule = plan.schedule()
        self.reader = plan.rank * plan.workers_per_rank + logical

    def batch(self, step: int) -> dict[str, Any]:
        index = self.schedule.source_at(step)
        if index not in self.streams:
            # Created on first use: a source that is never drawn never opens a file.
            self.streams[index] = _SourceStream(self.plan, index, self.reader, self.positions[index], self.stats)
        stream = self.streams[index]
        features = [stream.next() for _ in range(self.plan.batch_size)]
        return collate(self.plan.stage, features, self.plan.tokenizer, self.plan.image_size)

    def state(self) -> dict[str, Any]:
        return {
            "positions": {str(i): p.to_dict() for i, p in self.positions.items()},
            "stats": dict(self.stats.counts),
        }


class _StepDataset(IterableDataset):
    """The IterableDataset each torch DataLoader worker runs (or the main process when num_workers == 0)."""

    def __init__(self, plan: LoaderPlan, start_step: int, states: Mapping[int, Mapping[str, Any]]) -> None:
        super().__init__()
        self.plan = plan
        self.start_step = start_step
        self.states = dict(states)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None:
            # Decoding is per-sample Python work; torch intra-op threads per worker only oversubscribe the cores.
            torch.set_num_threads(1)
        width = self.plan.workers_per_rank
        logical = (self.start_step + physical) % width
        producer = _BatchProducer(self.plan, logical, self.states.get(logical))
        step = self.start_step + physical
        while True:
            batch = producer.batch(step)
            batch["_data_position"] = {"worker": logical, "step": step, "state": producer.state()}
            yield batch
            step += width


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class StatefulLoader:
    """Endless iterable of batch dicts with an exact, resumable data position.

    ``state_dict()`` describes what the trainer has consumed so far (per rank: save each rank's dict);
    ``load_state_dict()`` before the next ``iter()`` makes the loader continue exactly there.
    ``stats`` sums the skip counters (``skipped_corrupt``, ``skipped_long_caption``, ...) of the consumed batches.
    """

    def __init__(self, plan: LoaderPlan) -> None:
        self.plan = plan
        self._step = 0
        self._states: dict[int, dict[str, Any]] = {}

    @property
    def step(self) -> int:
        """Batches consumed so far on this rank."""
        return self._step

    @property
    def stats(self) -> dict[str, int]:
        return merge_counts([s.get("stats", {}) for s in self._states.values()])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = _StepDataset(self.plan, self._step, copy.deepcopy(self._states))
        cfg = self.plan.config
        if cfg.num_workers == 0:
            batches: Any = iter(dataset)
        else:
            batches = DataLoader(
                dataset,
                batch_size=None,
                num_workers=cfg.num_workers,
                collate_fn=_identity,
                prefetch_factor=cfg.prefetch_factor,
                pin_memory=cfg.pin_memory,
                generator=self._worker_seed_generator(),
            )
        for batch in batches:
            position = batch.pop("_data_position")
            if position["step"] != self._step:
                raise RuntimeError(
                    f"data loader out of order: got step {position['step']}, expected {self._step} "
                    "(is another iterator of this loader running at the same time?)"
                )
            self._states[int(position["worker"])] = position["state"]
            self._step += 1
            yield batch

    def _worker_seed_generator(self) -> torch.Generator:
        """The generator the DataLoader draws its workers' base seed from. Without one, creating the iterator draws
        from the *global* torch RNG, which the trainer restores on resume: the resumed run's noise, timesteps,
        dropout and null-condition draws would all be shifted by that one draw. A private generator keeps the global
        stream untouched (the workers themselves use only the explicit per-sample RNGs of `_SourceStream`)."""
        return torch.Generator().manual_seed(self.plan.seed * 1_000_003 + self.plan.rank * 1_009 + self._step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "stage": self.plan.stage,
            "step": self._step,
            "seed": self.plan.seed,
            "rank": self.plan.rank,
            "world_size": self.plan.world_size,
            "workers_per_rank": self.plan.workers_per_rank,
            "sources": [s.name for s in self.plan.config.sources],
            "workers": {str(k): copy.deepcopy(v) for k, v in self._states.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a data loader state (expected format {STATE_FORMAT!r}, got {state.get('format')!r})")
        if state.get("stage") != self.plan.stage:
            # A checkpoint of another stage (stage 3 started from a stage-2 run): its data position means nothing here.
            log.warning(
                "ignoring the data position of stage %r: this loader reads %s data", state.get("stage"), self.plan.stage
            )
            return
        self._step = int(state["step"])
        workers = {int(k): copy.deepcopy(v) for k, v in state.get("workers", {}).items()}
        same_layout = (
            int(state["world_size"]) == self.plan.world_size
            and int(state["workers_per_rank"]) == self.plan.workers_per_rank
            and int(state["seed"]) == self.plan.seed
            and list(state["sources"]) == [s.name for s in self.plan.config.sources]
        )
        if same_layout:
            self._states = workers
            return
        # Another split of the data: exact resume is impossible. Start every stream at an epoch no worker has begun
        # so no sample repeats before the others, and keep the skip counters.
        log.warning(
            "data position saved with world_size=%s, workers=%s, seed=%s, sources=%s; now world_size=%d, workers=%d, "
            "seed=%d, sources=%s: resuming the data at a fresh epoch (not exact)",
            state["world_size"], state["workers_per_rank"], state["seed"], state["sources"],
            self.plan.world_size, self.plan.workers_per_rank, self.plan.seed,
            [s.name for s in self.plan.config.sources],
        )  # fmt: skip
        epoch = 1 + max(
            (int(p["epoch"]) for w in workers.values() for p in w.get("positions", {}).values()), default=-1
        )
        fresh = {str(i): ShardPosition(epoch=epoch).to_dict() for i in range(len(self.plan.config.sources))}
        stats = merge_counts([w.get("stats", {}) for w in workers.values()])
        self._states = {0: {"positions": fresh, "stats": stats}}
        for logical in range(1, self.plan.workers_per_rank):
            self._states[logical] = {"positions": copy.deepcopy(fresh), "stats": {}}


def build_dataloader(
    stage: str,
    data_cfg: Mapping[str, Any],
    tokenizer: KosmosTokenizer,
    *,
    image_size: int,
    target_size: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    caption_filter: Callable[[str], bool] | None = None,
    base_dir: str | Path | None = None,
    frozen_cache: FrozenCache | None = None,
) -> StatefulLoader:
    """The loader of ``stage`` ("stage1" | "stage2" | "stage3") for this rank (docs/data.md).

    ``data_cfg`` is the stage TOML's ``[data]`` table; relative shard paths are taken from ``base_dir``
    (default: the working directory). ``caption_filter`` (stage 2: at most 75 CLIP tokens) drops captions it
    rejects. Shard patterns are expanded here, so a typo fails at start-up, not in a worker. ``frozen_cache``
    (stages 2 and 3 with ``[sd15] cache_outputs``) adds each sample's cached frozen-model outputs to the batch; its
    files are checked here (present, built for this run's setup), before any step.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    config = parse_data_config(stage, data_cfg)
    shards = [expand_shards(source.shards, base_dir) for source in config.sources]
    missing = [path for paths in shards for path in paths if not Path(path).is_file()]
    if len(missing) == sum(len(paths) for paths in shards):
        raise ShardError(f"none of the shard files exist (first: {missing[0]}); check [data.sources] shards")
    if missing:
        log.warning(
            "%d shard files do not exist (first: %s); they will be skipped and counted", len(missing), missing[0]
        )
    if frozen_cache is not None:
        checked = frozen_cache.check(sorted({p for paths in shards for p in paths if Path(p).is_file()}))
        log.info("frozen-output cache (%s): %d files checked", frozen_cache.kind, checked)
    plan = LoaderPlan(
        stage=stage,
        config=config,
        shards=shards,
        tokenizer=tokenizer,
        image_size=image_size,
        target_size=target_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        caption_filter=caption_filter,
        frozen_cache=frozen_cache,
    )
    return StatefulLoader(plan)
