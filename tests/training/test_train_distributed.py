"""Two-process (gloo, CPU) runs of stage 2 and stage 3: under torchrun FSDP2 gives the same losses as DDP and an
error ends with its own message; the DDP replicas end with identical parameters; killed inside a checkpoint save and
resumed, a run gives bit-for-bit the losses and weights of an uninterrupted run, with and without data-loader worker
processes, and with the frozen-output cache; the skip counters are summed over ranks."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from training.tiny_assets import write_tiny_init

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_sd15

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


def test_two_process_torchrun_runs_of_ddp_and_fsdp_stay_in_sync(assets, tmp_path):
    runs = {
        "s2ddp": [str(write_config(assets, "stage2", "captions", tmp_path / "s2ddp"))],
        "s2fsdp": [str(write_config(assets, "stage2", "captions", tmp_path / "s2fsdp")), "parallel.strategy=fsdp"],
    }
    torchrun(tmp_path, list(runs.values()))
    metrics = {name: results(tmp_path / name) for name in runs}
    for name, rows in metrics.items():
        assert [r["step"] for r in rows] == [1, 2], name
        assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows), name
        assert rows[0]["throughput/samples_per_s"] > 0
    ddp = [r["loss/total"] for r in metrics["s2ddp"]]
    fsdp = [r["loss/total"] for r in metrics["s2fsdp"]]
    assert fsdp == pytest.approx(ddp, rel=1e-4)  # same data, same seeds: sharding changes nothing


# -- kill inside a checkpoint save, resume, compare -------------------------------------------------------------------
# The two ranks are forked from the test process with torchrun's environment variables (what torchrun itself does
# for a single node, without re-importing torch and diffusers in every run), so 12 runs fit in seconds.
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, config: str, overrides: list[str], crash_at_save: int) -> None:
    from training import distributed
    from training.checkpoint import CRASH_ENV
    from training.train import Trainer
    from training.train_config import load_config

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    os.environ[CRASH_ENV] = str(crash_at_save)
    try:
        cfg = load_config(config, overrides)
        result = Trainer(cfg).run()
        Path(cfg.run.out_dir, f"losses_rank{rank}.json").write_text(json.dumps(result.losses))
        distributed.teardown()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _two_ranks(config: Path, overrides: list[str], crash_at_save: int = 0) -> list[int]:
    """Exit codes of both ranks; when one dies the other is killed, as torchrun does."""
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(config), overrides, crash_at_save)) for r in (0, 1)]
    for p in procs:
        p.start()
    running = list(procs)
    while running and all(p.exitcode in (None, 0) for p in procs):
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=300)
        running = [p for p in running if p.is_alive()]
    for p in running:
        p.kill()
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    state = load_file(str(ckpt / "model.safetensors"))
    optim = torch.load(ckpt / "optim.pt", weights_only=True)["state"]
    state.update({f"optim/{name}/{k}": v for name, s in optim.items() for k, v in s.items() if torch.is_tensor(v)})
    state.update({f"export/{k}": v for k, v in load_file(str(out / "export.safetensors")).items()})
    return state


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(("stage", "kind"), [("stage2", "captions"), ("stage3", "compositional")])
def test_a_kill_inside_a_checkpoint_save_resumes_bit_exactly(assets, tmp_path, stage, kind, num_workers):
    overrides = ["run.max_steps=4", "checkpoint.every=2", "checkpoint.resume=\"latest\"",
                 f"data.num_workers={num_workers}"]
    whole = write_config(assets, stage, kind, tmp_path / "whole")
    assert _two_ranks(whole, overrides) == [0, 0]
    results(tmp_path / "whole")  # the DDP replicas end identical

    split = write_config(assets, stage, kind, tmp_path / "split")
    # Rank 0 dies (os._exit, as kill -9) after writing part of the step-4 checkpoint; rank 1 is then killed.
    assert _two_ranks(split, overrides, crash_at_save=2)[0] == 17
    ckpts = tmp_path / "split" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert (ckpts / ".tmp-step_00000004" / "model.safetensors").is_file()
    assert _two_ranks(split, overrides) == [0, 0]  # resumes from step 2 and redoes steps 3 and 4

    for rank in (0, 1):
        full = json.loads((tmp_path / "whole" / f"losses_rank{rank}.json").read_text())
        resumed = json.loads((tmp_path / "split" / f"losses_rank{rank}.json").read_text())
        assert len(full) == 4 and resumed == full[2:], rank  # bit-equal, every rank
    a, b = _final_state(tmp_path / "whole"), _final_state(tmp_path / "split")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_cached_run_gives_the_uncached_losses_and_resumes_bit_exactly(assets, tmp_path):
    """Stage 3 with `[sd15] cache_outputs` (VAE posteriors from `training.build_cache`, read by 2 data workers per
    rank on 2 DDP ranks): every rank's losses are the uncached run's, and a run killed inside a checkpoint save
    resumes bit for bit, as without the cache."""
    from training.build_cache import build_cache
    from training.train_config import load_config

    overrides = ["run.max_steps=4", "checkpoint.every=2", "checkpoint.resume=\"latest\"", "data.num_workers=2"]
    plain = write_config(assets, "stage3", "compositional", tmp_path / "plain")
    build_cache(load_config(plain))
    assert _two_ranks(plain, overrides) == [0, 0]
    cached = [*overrides, "sd15.cache_outputs=true"]
    whole = write_config(assets, "stage3", "compositional", tmp_path / "whole")
    assert _two_ranks(whole, cached) == [0, 0]
    results(tmp_path / "whole")
    assert json.loads((tmp_path / "whole" / "config.resolved.json").read_text())["sd15"]["cache_outputs"] is True
    split = write_config(assets, "stage3", "compositional", tmp_path / "split")
    assert _two_ranks(split, cached, crash_at_save=2)[0] == 17
    assert _two_ranks(split, cached) == [0, 0]
    for rank in (0, 1):
        uncached = json.loads((tmp_path / "plain" / f"losses_rank{rank}.json").read_text())
        full = json.loads((tmp_path / "whole" / f"losses_rank{rank}.json").read_text())
        resumed = json.loads((tmp_path / "split" / f"losses_rank{rank}.json").read_text())
        assert full == pytest.approx(uncached, rel=1e-6), rank
        assert len(full) == 4 and resumed == full[2:], rank
    a, b = _final_state(tmp_path / "whole"), _final_state(tmp_path / "split")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_skip_counters_are_summed_over_ranks(assets, tmp_path):
    """Rank 1 alone reads a shard with captionless samples: metrics.jsonl (written by rank 0) must count them."""
    from training.data.shards import _epoch_order
    from training.data.synthetic import synthetic_sample
    from training.data.writer import ShardWriter

    rank1_shard = _epoch_order(2, 0, 0, 0)[1]  # seed 0, source 0, epoch 0: reader 1 of 2 reads this shard
    with ShardWriter(tmp_path / "shards", "captions", 8) as writer:
        for shard in range(2):
            for i in range(8):
                sample = synthetic_sample("captions", 8 * shard + i)
                if shard == rank1_shard and i % 2 == 0:
                    sample = {k: v for k, v in sample.items() if k != "txt"}  # stage 2 reads captions only
                writer.write(sample)
    config = write_config(assets, "stage2", "captions", tmp_path / "run")
    overrides = [f"data.sources=[{{kind=\"captions\", shards=\"{tmp_path / 'shards'}\"}}]",
                 "parallel.check_replicas=false"]
    assert _two_ranks(config, overrides) == [0, 0]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Two steps of one sample: rank 1 skipped a captionless sample before each of its two good ones.
    assert [r["data/skipped_corrupt"] for r in rows] == [1.0, 2.0]
    assert all(r["data/skipped_missing_shard"] == 0.0 for r in rows)


def test_an_error_under_torchrun_ends_with_its_own_message(tmp_path):
    """torchrun's failure summary carries the rank's traceback, so the real message is the last thing a user reads
    (not torchrun's "To enable traceback see ...")."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "training.train", "--config", str(REPO / "training" / "configs" / "stage2.toml"), 'optim.lr="1e-4"']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip() and set(line.strip()) != {"="}]
    assert lines[-1].endswith('[optim] lr = "1e-4": expected a number, got a string'), proc.stderr[-2000:]
    assert "To enable traceback" not in proc.stderr
