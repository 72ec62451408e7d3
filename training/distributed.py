"""Process-group setup from torchrun's environment, and the DDP / FSDP2 wrapping of a stage module.

One code path for every launch: plain `python -m training.train` (no RANK in the environment) runs a single process
without a process group; `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR and we join the group with
gloo on CPU and nccl on CUDA.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (if launched by torchrun) and pick this rank's device.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"[run] device = {device!r} was requested but CUDA is not available on this machine; "
                           "use device = \"auto\" or \"cpu\"")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
        log.info("joined process group: backend %s, rank %d / %d, device %s", backend, rank, world_size, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum over ranks of per-rank scalars (identical key sets on every rank), in float64."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of per-rank scalar metrics (identical key sets on every rank)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {k: v / world for k, v in all_reduce_sum(values, device).items()}


def all_gather_object(obj: object) -> list[object]:
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """DistributedDataParallel over the trainable parameters (frozen ones have requires_grad=False and are skipped)."""
    if not dist.is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def wrap_fsdp(module: nn.Module, shard_units: Iterable[nn.Module], forward_methods: Iterable[str] = (),
              mixed_precision: torch.dtype | None = None) -> nn.Module:
    """FSDP2: `fully_shard` every unit (transformer layers), then the root.

    The root's forward is the whole training step, so parameters outside the units (embeddings, norms, the
    connector...) are gathered once per step. Methods other than `forward` that run the model (sampling) are
    registered so FSDP gathers parameters for them too. Works without a process group of size > 1 as well.
    mixed_precision: parameter dtype for compute (bf16); master weights and the optimiser stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for unit in shard_units:
        fully_shard(unit, **kwargs)
    fully_shard(module, **kwargs)
    for name in forward_methods:
        register_fsdp_forward_method(module, name)
    return module


def is_fsdp(module: nn.Module) -> bool:
    """True for a module `wrap_fsdp` sharded (its registered forward methods gather parameters)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unwrap(module: nn.Module) -> nn.Module:
    """The stage module under a DDP wrapper (FSDP2 shards in place, so it is its own module)."""
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


def no_sync(module: nn.Module, enabled: bool) -> Callable[[], object]:
    """Context factory that skips the gradient all-reduce on accumulation micro-steps (DDP and FSDP2)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext
    if hasattr(module, "no_sync"):
        return module.no_sync
    if hasattr(module, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def _fsdp_no_sync():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)

        return _fsdp_no_sync
    return contextlib.nullcontext
