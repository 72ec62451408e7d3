"""Counters of skipped samples and shards, with rate-limited logging (first occurrence, then every N-th)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Every reason a sample or a shard is skipped: the counters `data/<reason>` in metrics.jsonl and TensorBoard (summed
# over the data workers of a rank, then over the ranks).
SKIP_REASONS = (
    "skipped_bad_shard",       # a tar unreadable from some point on (its readable samples are kept)
    "skipped_missing_shard",   # a shard file that cannot be opened
    "skipped_corrupt",         # a member missing or undecodable
    "skipped_empty",           # nothing usable left (no caption, no entity...)
    "skipped_long_caption",    # over the source's max_caption_tokens
    "skipped_caption_filter",  # refused by the stage's filter (stage 2: over 75 CLIP tokens)
    "skipped_too_long",        # the whole sequence over [data] max_tokens
    "skipped_small_image",     # shorter side under the source's min_image_side
    "skipped_error",           # an unexpected decoder failure
)


class SkipStats:
    """``add(reason, message)`` counts a skipped sample/shard under ``reason`` and logs at most once per
    ``log_every`` skips (the first one always), so a badly broken shard cannot flood the log."""

    def __init__(self, log_every: int = 100, counts: Mapping[str, int] | None = None, where: str = "") -> None:
        self.log_every = max(1, log_every)
        self.counts: dict[str, int] = dict(counts or {})
        self.where = where

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, message: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; add it to SKIP_REASONS")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        total = self.total
        if total == 1 or total % self.log_every == 0:
            log.warning("%sskipped: %s (%d skipped so far: %s)", self.where, message, total, self.counts)


def merge_counts(parts: list[Mapping[str, int]]) -> dict[str, int]:
    """Sum of several counters (one per data worker)."""
    out: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + int(value)
    return out
