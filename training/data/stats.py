"""Counters of skipped samples and shards, with rate-limited logging (first occurrence, then every N-th)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)


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
