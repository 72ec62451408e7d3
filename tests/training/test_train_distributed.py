"""Two-process torchrun (gloo, CPU) runs of stage 2 and stage 3: they complete, the DDP replicas end with identical
parameters, and FSDP2 gives the same losses as DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.tiny_assets import write_tiny_init

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.sd15 import write_tiny_sd15

    root = tmp_path_factory.mktemp("dist_assets")
    write_tiny_sd15(root / "sd15")
    for kind in ("captions", "compositional"):
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "init.safetensors", tokenizer_dir)
    return root


def write_config(root: Path, stage: str, kind: str, out: Path) -> Path:
    text = f'''stage = "{stage}"
[run]
out_dir = "{out}"
max_steps = 2
[model]
init = "{root / 'init.safetensors'}"
activation_checkpointing = true
[parallel]
precision = "fp32"
check_replicas = true
[checkpoint]
every = 0
export_dtype = "fp32"
[log]
every = 1
tensorboard = false
progress = "lines"
[sd15]
path = "{root / 'sd15'}"
resolution = 16
[data]
batch_size = 1
num_workers = 0
max_tokens = 512
[[data.sources]]
kind = "{kind}"
shards = "{root / 'shards' / kind}"
'''
    path = out.with_suffix(".toml")
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


DRIVER = """
import sys
from training import distributed
from training.train import Trainer
from training.train_config import load_config

# Several runs in one pair of processes: interpreter and library start-up is most of a tiny run's time.
for config, *overrides in (line.split() for line in sys.argv[1:]):
    Trainer(load_config(config, overrides)).run()
distributed.teardown()
"""


def torchrun(tmp_path: Path, runs: list[list[str]]) -> str:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           *(" ".join(r) for r in runs)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stderr


def results(out: Path) -> list[dict]:
    checks = json.loads((out / "replica_checksums.json").read_text())
    assert checks["in_sync"] and len(checks["ranks"]) == 2
    assert (out / "export.safetensors").is_file()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_runs_of_stage2_and_stage3_stay_in_sync(assets, tmp_path):
    runs = {
        "stage2_ddp": [str(write_config(assets, "stage2", "captions", tmp_path / "s2ddp"))],
        "stage2_fsdp": [str(write_config(assets, "stage2", "captions", tmp_path / "s2fsdp")),
                        "parallel.strategy=fsdp"],
        "stage3_ddp": [str(write_config(assets, "stage3", "compositional", tmp_path / "s3ddp"))],
    }
    torchrun(tmp_path, list(runs.values()))
    metrics = {name: results(tmp_path / name.replace("stage", "s").replace("_", "")) for name in runs}
    for name, rows in metrics.items():
        assert [r["step"] for r in rows] == [1, 2], name
        assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows), name
    ddp = [r["loss/total"] for r in metrics["stage2_ddp"]]
    fsdp = [r["loss/total"] for r in metrics["stage2_fsdp"]]
    assert fsdp == pytest.approx(ddp, rel=1e-4)  # same data, same seeds: sharding changes nothing
    assert metrics["stage3_ddp"][0]["throughput/samples_per_s"] > 0
