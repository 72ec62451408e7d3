"""Benchmarks, beside the code they measure (not in it): `python -m benchmarks.core` measures the core's checkpoint
format and encode speed against transformers' Kosmos-2. The trainer's own benchmark is `python -m training.throughput`;
`python -m benchmarks.frozen_cache` measures what the trainer's frozen-output cache saves."""
