"""Training-state checkpoints: atomic, rotating, resumable, DDP- and FSDP2-aware.

Layout of a run folder:
    <out_dir>/checkpoints/step_00002000/
        model.safetensors   trainable parameters, full (unsharded) tensors, fp32       (rank 0)
        optim.pt            optimiser state keyed by parameter name, full tensors       (rank 0)
        trainer.pt          step, lr scheduler, grad scaler                             (rank 0)
        rank_00000.pt ...   per rank: RNG states (python, numpy, torch, cuda) + data-loader position
        complete.json       written last; a folder without it is never resumed from
    <out_dir>/checkpoints/latest   text file naming the newest complete folder, replaced atomically

FSDP strategy: full state dicts gathered to rank 0 (`torch.distributed.checkpoint.state_dict` with
`full_state_dict=True, cpu_offload=True`), so one checkpoint resumes on any number of ranks and with either DDP or
FSDP; loading gives every rank the full tensors and FSDP re-shards them. (At the 1.9 B scale of KOSMOS-G this fits in
host memory; sharded DCP checkpoints would only pay off far beyond it.)

Atomicity: every rank writes into `.tmp-step_N/`, then rank 0 writes `complete.json`, renames the folder to
`step_N/` and only then replaces `latest`. A crash at any point leaves `latest` pointing at the previous complete
checkpoint; stale `.tmp-*` folders are removed at the next start. Frozen weights (SD1.5, a frozen MLLM) are not
saved: they are reloaded from the files named in the config.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from .distributed import barrier, unwrap

log = logging.getLogger(__name__)

# Test hook: crash (os._exit) in the middle of the N-th checkpoint write of this process, after part of the files
# are on disk, to prove that `latest` stays loadable.
CRASH_ENV = "KOSMOS_G_CRASH_IN_CHECKPOINT_WRITE"
_STEP_PREFIX = "step_"


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in unwrap(model).named_parameters() if p.requires_grad}


def full_model_state_dict(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict of the stage module; on ranks > 0 of a distributed run it may be empty.
    Collective under FSDP: every rank must call it."""
    if dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if names is not None:
        wanted = set(names)
        sd = {k: v for k, v in sd.items() if k in wanted}
    return sd


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Same layout as the distributed helper: state keyed by parameter name, so files are interchangeable.
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    raw = optimizer.state_dict()
    index_to_name = {}
    for group, raw_group in zip(optimizer.param_groups, raw["param_groups"], strict=True):
        for p, idx in zip(group["params"], raw_group["params"], strict=True):
            index_to_name[idx] = names[id(p)]
    state = {index_to_name[i]: {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
             for i, s in raw["state"].items()}
    groups = [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in raw["param_groups"]]
    return {"state": state, "param_groups": groups}


def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    if dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
        return
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    name_to_index: dict[str, int] = {}
    groups = []
    idx = 0
    for group, saved in zip(optimizer.param_groups, osd["param_groups"], strict=True):
        ids = []
        for p in group["params"]:
            name_to_index[names[id(p)]] = idx
            ids.append(idx)
            idx += 1
        groups.append({**saved, "params": ids})
    state = {name_to_index[n]: s for n, s in osd["state"].items() if n in name_to_index}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _load_model_state(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    expected = trainable_names(model)
    missing = sorted(expected - set(sd))
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {len(missing)} trainable tensor(s), e.g. {missing[:3]}; "
                           "was it written by another stage or a different [model] trainable list?")
    if dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        result = unwrap(model).load_state_dict(sd, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"checkpoint {path} has tensors the model does not: {result.unexpected_keys[:3]}")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Saves and restores the full training state under `<root>` (see the module docstring)."""

    def __init__(self, root: Path, keep: int, rank: int, world_size: int):
        self.root = Path(root)
        self.keep = max(1, keep)
        self.rank = rank
        self.world_size = world_size
        self._saves = 0
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):
                log.warning("removing incomplete checkpoint %s (a previous run stopped while writing it)", stale)
                shutil.rmtree(stale, ignore_errors=True)
        barrier()

    # -- discovery ---------------------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        dirs = [d for d in self.root.glob(f"{_STEP_PREFIX}*") if (d / "complete.json").is_file()]
        return sorted(dirs, key=lambda d: int(d.name[len(_STEP_PREFIX):]))

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if pointer.is_file():
            target = self.root / pointer.read_text().strip()
            if (target / "complete.json").is_file():
                return target
            log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer,
                        target)
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def resolve(self, resume: str) -> Path | None:
        """"" -> None; "latest" -> newest complete checkpoint or None (fresh start); a path -> that folder."""
        if not resume:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not (path / "complete.json").is_file():
            raise FileNotFoundError(f"checkpoint.resume = {resume!r}: {path} is not a complete checkpoint folder "
                                    f"(expected {path / 'complete.json'}); use 'latest' or a {self.root}/step_* folder")
        return path

    # -- save ----------------------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler,
             loader_state: dict | None, extra: dict | None = None) -> Path:
        """Collective: every rank calls it. Returns the final folder."""
        t0 = time.perf_counter()
        self._saves += 1
        crash_at = int(os.environ.get(CRASH_ENV, "0"))
        name = f"{_STEP_PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        # Gathers are collective under FSDP, so every rank runs them; only rank 0 receives and writes the tensors.
        model_sd = full_model_state_dict(model, trainable_names(model))
        optim_sd = _optimizer_state(model, optimizer)
        if self.rank == 0:
            save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
            if crash_at == self._saves:
                log.error("%s=%d: exiting in the middle of writing %s", CRASH_ENV, crash_at, tmp)
                os._exit(17)
            torch.save(optim_sd, tmp / "optim.pt")
            torch.save({"step": step, "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "world_size": self.world_size, "extra": extra or {}}, tmp / "trainer.pt")
        torch.save({"rng": rng_state(), "loader": loader_state}, tmp / f"rank_{self.rank:05d}.pt")
        barrier()
        if self.rank == 0:
            with open(tmp / "complete.json", "w") as f:
                json.dump({"step": step, "world_size": self.world_size, "time": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer_tmp = self.root / "latest.tmp"
            pointer_tmp.write_text(name + "\n")
            os.replace(pointer_tmp, self.root / "latest")
            self._rotate()
            log.info("saved checkpoint %s in %.1fs", final, time.perf_counter() - t0)
        barrier()
        return final

    def _rotate(self) -> None:
        done = self.complete_checkpoints()
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # -- load ----------------------------------------------------------------------------------------------------
    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler) -> dict:
        """Restore model, optimiser, scheduler, scaler and this rank's RNG; returns
        {"step": int, "loader": loader state or None, "extra": dict, "rng_restored": bool}."""
        path = Path(path)
        _load_model_state(model, load_file(str(path / "model.safetensors")), path)
        _load_optimizer_state(model, optimizer, torch.load(path / "optim.pt", weights_only=True))
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        scheduler.load_state_dict(trainer["scheduler"])
        if scaler is not None and trainer.get("scaler"):
            scaler.load_state_dict(trainer["scaler"])
        saved_world = int(trainer.get("world_size") or 1)
        loader_state = None
        if saved_world == self.world_size:
            per_rank = torch.load(path / f"rank_{self.rank:05d}.pt", weights_only=True)
            set_rng_state(per_rank["rng"])
            loader_state = per_rank["loader"]
        else:
            # Another number of ranks: RNG streams restart from the seed; the data loader gets a saved position
            # anyway so it can tell the split changed and move to an epoch no rank has started.
            nearest = path / f"rank_{min(self.rank, saved_world - 1):05d}.pt"
            loader_state = torch.load(nearest, weights_only=True)["loader"] if nearest.is_file() else None
            log.warning("checkpoint %s was written by %d ranks, this run has %d: weights and optimiser resume, RNG "
                        "streams restart from the seed, the data continues at a fresh epoch", path, saved_world,
                        self.world_size)
        log.info("resumed from %s at step %d", path, trainer["step"])
        return {"step": int(trainer["step"]), "loader": loader_state, "extra": trainer.get("extra", {}),
                "rng_restored": saved_world == self.world_size}
