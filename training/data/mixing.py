"""Weighted mixture of data sources, one source per step (the official MixIterator semantics).

Each step's batch comes from a single source drawn by weight. The official MixIterator draws with an unseeded
``random.Random()`` per GPU; here the draw is a pure function of (seed, step[, rank]) so a run is reproducible and
a resumed run draws exactly the sources an uninterrupted one would have drawn, without carrying RNG state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class SourceSchedule:
    """Which source feeds step ``k``. With ``rank=None`` all ranks share the schedule (same graph on every rank)."""

    def __init__(self, weights: Sequence[float], seed: int, rank: int | None = None) -> None:
        if not weights or sum(weights) <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {list(weights)}")
        self.weights = [float(w) for w in weights]
        self.seed = seed
        self.rank = rank
        self._population = list(range(len(self.weights)))

    def source_at(self, step: int) -> int:
        """Index of the source for global step ``step`` (0-based batches consumed on this rank)."""
        if len(self.weights) == 1:
            return 0
        tag = "all" if self.rank is None else f"rank{self.rank}"
        rng = random.Random(f"mix/{self.seed}/{tag}/{step}")
        return rng.choices(self._population, self.weights)[0]

    def count_before(self, step: int) -> list[int]:
        """How many of steps 0..step-1 drew each source (for reports and tests)."""
        counts = [0] * len(self.weights)
        for k in range(step):
            counts[self.source_at(k)] += 1
        return counts
