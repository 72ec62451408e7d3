"""`python -m benchmarks.core` runs from a fresh clone with no flags but the size: the tokenizer it needs ships
with the core, and a tiny run does not print the official size's memory target as if it were missed."""

from __future__ import annotations

from benchmarks.core import main


def test_tiny_benchmark_runs_with_the_shipped_tokenizer(capsys, tmp_path):
    assert main(["--size", "tiny", "--repeats", "1", "--threads", "1", "--json", str(tmp_path / "bench.json")]) == 0
    table = capsys.readouterr().out
    assert "MLLM forward, 134 tokens" in table  # the official tokenizer: "<i> wearing <i>" is 134 ids
    assert "no target at this size" in table and "target <= 1.25" not in table
    assert (tmp_path / "bench.json").stat().st_size > 0
