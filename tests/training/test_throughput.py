"""The throughput benchmark runs a few steps on synthetic shards and reports samples/s, counted FLOPs and MFU."""

from __future__ import annotations

import pytest
import torch

from training.throughput import PEAK_TFLOPS, format_report, main, peak_tflops


def test_benchmark_reports_samples_per_second_and_mfu(tmp_path, tokenizer_dir, capsys):
    config = tmp_path / "bench.toml"
    config.write_text(f'''stage = "stage1"
[model]
preset = "tiny"
tokenizer = "{tokenizer_dir}"
[parallel]
precision = "fp32"
[data]
batch_size = 2
num_workers = 0
max_tokens = 256
''')
    result = main(["--config", str(config), "--steps", "2", "--warmup", "1", "--synthetic", "--peak-tflops", "0.5"])
    out = capsys.readouterr().out
    assert "samples/s per device" in out and "MFU" in out and "n/a" not in out
    assert result["samples_per_s_per_device"] > 0 and result["tokens_per_s_per_device"] > 0
    # The tiny MLLM's forward alone is > 2 * params-in-layers * tokens: the count must be of that order at least.
    assert result["flops_per_step_per_device"] > 1e6
    assert 0 < result["mfu"] == pytest.approx(result["achieved_tflops_per_device"] / 0.5)
    assert result["micro_batch"] == 2 and result["steps"] == 2


def test_peak_lookup_and_report_without_peak():
    assert peak_tflops(torch.device("cpu"), "bf16", None)[0] is None
    assert peak_tflops(torch.device("cpu"), "bf16", 312.0) == (312.0, "--peak-tflops")
    assert dict(PEAK_TFLOPS)["A100"] == 312.0
    report = format_report({"stage": "stage3", "devices": 1, "device": "cpu", "strategy": "ddp", "precision": "fp32",
                            "micro_batch": 1, "grad_accum": 1, "steps": 1, "step_time_s": 1.0,
                            "samples_per_s_per_device": 1.0, "tokens_per_s_per_device": 1.0,
                            "flops_per_step_per_device": None, "peak_tflops": None,
                            "peak_source": "unknown (pass --peak-tflops)", "max_memory_gb": None})
    assert "MFU" in report and "n/a" in report and "--peak-tflops" in report


def test_benchmark_with_the_frozen_output_cache(tmp_path, tokenizer_dir, capsys):
    """`--cache` builds the stage's cache for the (synthetic) shards and measures with it; `--no-flops` skips the
    counting step; `--json` writes the result with per-step wall and CPU times."""
    import json

    from training.tiny_assets import write_tiny_init, write_tiny_sd15

    write_tiny_sd15(tmp_path / "sd15")
    write_tiny_init(tmp_path / "init.safetensors", tokenizer_dir)
    config = tmp_path / "bench.toml"
    config.write_text(f'''stage = "stage3"
[model]
init = "{tmp_path / 'init.safetensors'}"
[parallel]
precision = "fp32"
[sd15]
path = "{tmp_path / 'sd15'}"
resolution = 16
[data]
batch_size = 2
num_workers = 0
max_tokens = 512
''')
    out = tmp_path / "result.json"
    result = main(["--config", str(config), "--steps", "2", "--warmup", "0", "--synthetic", "--cache", "--no-flops",
                   "--json", str(out)])
    assert "frozen-output cache   on" in capsys.readouterr().out
    assert result["frozen_cache"] is True and result["flops_per_step_per_device"] is None
    saved = json.loads(out.read_text())
    assert len(saved["step_times_s"]) == len(saved["step_cpu_times_s"]) == 2 and saved["threads"] >= 1
