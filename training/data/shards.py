"""Reading webdataset tar shards as an endless, exactly resumable stream of raw samples for one reader.

A *reader* is one (rank, data worker) pair; there are ``world_size * max(1, num_workers)`` of them. Every epoch
the shard list is shuffled with a seed that all readers share, and reader ``g`` takes shards ``g, g + G, ...`` of
that order, so readers never see the same shard in the same epoch and no reader waits for another (uneven shard
counts only make some readers start their next epoch earlier). When there are fewer shards than readers every
reader walks all shards and keeps every G-th sample instead.

The position (epoch, shard index in this reader's epoch list, samples read in that shard, samples read in the
epoch) points at the next raw sample, so a resumed reader re-opens that shard, skips the samples already read
(tar entries are read but not decoded) and continues with exactly the sample an uninterrupted run would have read.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_iterator

log = logging.getLogger(__name__)


# A source that yields nothing for this many epochs in a row is broken, not unlucky: stop instead of spinning.
EMPTY_EPOCHS_BEFORE_ERROR = 5


class ShardError(RuntimeError):
    """A source has no readable data at all (every shard missing, unreadable or empty for this reader)."""


def expand_shards(patterns: Sequence[str], base_dir: str | os.PathLike | None = None) -> list[str]:
    """Paths of all shards: brace patterns (``data/{000000..000099}.tar``) expanded, folders replaced by their
    ``*.tar`` files, shell globs (``*``) resolved. Relative paths are taken from ``base_dir`` (default: cwd)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    paths: list[str] = []
    for pattern in patterns:
        for item in braceexpand.braceexpand(pattern):
            path = Path(os.path.expanduser(item))
            if not path.is_absolute():
                path = base / path
            if path.is_dir():
                found = sorted(str(p) for p in path.glob("*.tar"))
                if not found:
                    raise ShardError(f"{path}: folder has no .tar shards (expected webdataset tar files)")
                paths += found
            elif any(ch in item for ch in "*?["):
                found = sorted(glob.glob(str(path)))
                if not found:
                    raise ShardError(f"{path}: the glob matches no shard files")
                paths += found
            else:
                paths.append(str(path))
    if not paths:
        raise ShardError(f"the shard patterns {list(patterns)} expand to no files")
    return paths


@dataclass
class ShardPosition:
    """Where a reader is: the next raw sample to read. Plain ints so it fits a JSON/torch checkpoint."""

    epoch: int = 0
    shard: int = 0  # index into this reader's shard list for `epoch`
    sample: int = 0  # raw samples already read from that shard
    epoch_sample: int = 0  # raw samples already read in `epoch` (strided mode keeps every G-th one)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ShardPosition:
        return cls(**{k: int(d[k]) for k in ("epoch", "shard", "sample", "epoch_sample")})


@dataclass(frozen=True)
class RawSample:
    """One sample as stored: member suffix -> bytes (``{"jpg": ..., "txt": ...}``) plus where it came from.

    ``uid`` (epoch, shard id in the full list, sample index in that shard) seeds the per-sample random choices, so
    they do not depend on which reader read the sample or on when it was read.
    """

    key: str
    url: str
    members: dict[str, bytes]
    uid: tuple[int, int, int]


def _epoch_order(num_shards: int, seed: int, source_index: int, epoch: int) -> list[int]:
    order = list(range(num_shards))
    random.Random(f"shards/{seed}/{source_index}/{epoch}").shuffle(order)
    return order


class ShardReader:
    """Endless raw-sample stream of one source for one reader; ``position`` always points at the next sample.

    on_error(kind, message) is told about missing or broken shards (the caller counts them); the stream goes on.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int,
        source_index: int,
        reader: int,
        num_readers: int,
        position: ShardPosition | None = None,
        on_error: Callable[[str, str], None] | None = None,
        name: str = "",
    ) -> None:
        if not shards:
            raise ShardError(f"source {name!r} has no shards")
        if not 0 <= reader < num_readers:
            raise ValueError(f"reader {reader} is outside 0..{num_readers - 1}")
        self.shards = list(shards)
        self.seed = seed
        self.source_index = source_index
        self.reader = reader
        self.num_readers = num_readers
        self.position = position or ShardPosition()
        self.name = name
        self._on_error = on_error or (lambda kind, message: log.warning("%s", message))
        # Strided mode: fewer shards than readers, so split by sample instead of by shard.
        self.strided = len(self.shards) < num_readers

    def epoch_shards(self, epoch: int) -> list[int]:
        """Indices (into ``shards``) this reader reads in ``epoch``, in reading order."""
        order = _epoch_order(len(self.shards), self.seed, self.source_index, epoch)
        return order if self.strided else order[self.reader :: self.num_readers]

    def __iter__(self) -> Iterator[RawSample]:
        return self._samples()

    def _samples(self) -> Iterator[RawSample]:
        pos = self.position
        empty_epochs = 0
        while True:
            kept_in_epoch = 0
            complete_epoch = pos.shard == 0 and pos.sample == 0
            shard_ids = self.epoch_shards(pos.epoch)
            while pos.shard < len(shard_ids):
                shard_id = shard_ids[pos.shard]
                url = self.shards[shard_id]
                for index, key, members in read_shard(url, pos.sample, self._on_error, self.name):
                    # Advance first: once yielded, the sample counts as read (exact resume point).
                    pos.sample = index + 1
                    counter = pos.epoch_sample
                    pos.epoch_sample += 1
                    if self.strided and counter % self.num_readers != self.reader:
                        continue
                    kept_in_epoch += 1
                    yield RawSample(key=key, url=url, members=members, uid=(pos.epoch, shard_id, index))
                pos.shard += 1
                pos.sample = 0
            # One empty epoch can be bad luck (this reader drew only missing shards); several in a row cannot.
            empty_epochs = empty_epochs + 1 if complete_epoch and kept_in_epoch == 0 else 0
            if empty_epochs >= EMPTY_EPOCHS_BEFORE_ERROR:
                raise ShardError(
                    f"source {self.name!r}: reader {self.reader} of {self.num_readers} found no samples in "
                    f"{empty_epochs} whole epochs over {len(self.shards)} shards (first: {self.shards[0]}); the "
                    "shards are missing, unreadable or hold fewer samples than there are readers (ranks x workers)"
                )
            pos.epoch += 1
            pos.shard = 0
            pos.sample = 0
            pos.epoch_sample = 0


def read_shard(url: str, skip: int = 0, on_error: Callable[[str, str], None] | None = None,
               name: str = "") -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(index in shard, key, members) of every sample of one shard from index ``skip`` on; a missing shard or a
    read error ends it early and is reported to ``on_error(kind, message)`` (the loader's skip counters; the
    frozen-output cache builder reads shards the same way)."""
    on_error = on_error or (lambda kind, message: log.warning("%s", message))
    try:
        stream = open(url, "rb")  # closed in finally (the generator may be abandoned)
    except OSError as err:
        on_error("skipped_missing_shard", f"source {name!r}: cannot open shard {url}: {err}")
        return
    errors: list[Exception] = []
    try:
        files = _until_error(({**f, "__url__": url} for f in tar_file_iterator(stream)), errors)
        for index, sample in enumerate(group_by_keys(files)):
            if index < skip:
                continue
            key = sample.pop("__key__")
            sample.pop("__url__", None)
            yield index, key, _members(sample)
    except Exception as err:  # e.g. a member name twice in one sample
        errors.append(err)
    finally:
        stream.close()
    if errors:  # a broken tar ends that shard, never the run
        on_error("skipped_bad_shard", f"source {name!r}: shard {url} is unreadable from here on: {errors[0]}")


def _until_error(files: Iterator[dict[str, Any]], errors: list[Exception]) -> Iterator[dict[str, Any]]:
    """The tar members until the first read error (kept in `errors`), then webdataset's end-of-shard marker `{}`.

    `group_by_keys` holds each sample until the next key starts; without the marker, an error in the first member
    of sample k+1 would also drop the complete sample k, uncounted. With it, k is yielded; a sample whose own member
    was cut short comes out incomplete and is counted by the decoder (`skipped_corrupt`)."""
    try:
        yield from files
    except Exception as err:
        errors.append(err)
    yield {}


def _members(sample: dict[str, Any]) -> dict[str, bytes]:
    return {k: v for k, v in sample.items() if isinstance(v, (bytes, bytearray))}
