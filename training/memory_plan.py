"""Memory plan of a training stage for a GPU size: weights, gradients, optimizer states and activations of the real
model at its real size, simulated on this machine without a GPU, and which settings fit.

    python -m training.throughput --config training/configs/stage3.toml --plan --gpu-memory 24 --gpu "RTX 4090"
    python -m training.throughput --config training/configs/stage3.toml --plan --gpu-memory 80 --gpus 8 --gpu A100

How the numbers are made (nothing is a guessed constant):
* The stage's own module (`Stage.assemble`: KOSMOS-G at the config's architecture, the frozen SD1.5 or SDXL parts at
  their real sizes and `[sd15] dtype`, the stage's trainable selection) is built under `FakeTensorMode`: tensors with shapes,
  dtypes and storage sizes but no data, so the 1.9 B + 0.9 B parameters cost no memory here.
* One micro-step (forward under autocast, backward; then gradient clipping and the AdamW step) runs on those tensors
  while `LiveBytes`, a dispatch mode, adds the bytes of every storage an operator creates and subtracts them when the
  storage is freed (a weakref on the storage). That is the byte count a caching-free allocator holds at every moment
  for the real operator sequence: saved activations, activation checkpointing's recomputation, autocast's bf16 copies
  of fp32 weights, the frozen VAE encode, gradients as they appear, the optimizer's temporaries. Fake tensors report
  device "cpu", so kernels are the CPU ones (flash attention for scaled_dot_product_attention, as on a GPU); autocast
  follows the CUDA policy (`cuda_autocast_policy`), not the CPU one.
* FLOPs of the same step: FlopCounterMode's formulas (matmuls, convolutions, attention) applied by the same mode.
* The same mode measures real CPU tensors too: tests/training/test_memory_plan.py checks at tiny size that the fake
  simulation equals the measured live bytes of a real `Trainer.step`, and that the formulas below hold.

What the plan adds by formula (stated in the output):
* AdamW (torch) keeps 2 fp32 states per trainable element (8 B); torch's default on CUDA (foreach) also allocates
  temporaries at the step (simulated); `fused=True` computes in one kernel without them. bitsandbytes' AdamW8bit
  keeps 2 uint8 states + 2 fp32 absmax per 256-element block for tensors of >= 4096 elements and fp32 states below
  (bitsandbytes 0.50 optim/optimizer.py: `min_8bit_size=4096`, `blocksize = 256`); the trainer does not offer it.
* FSDP2 on N GPUs (`parallel.strategy = "fsdp"`): KOSMOS-G weights, gradients and states / N; the frozen SD1.5 parts
  stay whole (they are outside the module tree); with bf16 the gathered compute copies are bf16 (the root unit all
  step, two layer units at a time: current + prefetch, plus one unit's unsharded gradients), and autocast makes no
  weight copies, so activations are the simulated ones without those copies. Communication time is not modelled.
* DDP on N > 1 GPUs adds one fp32 gradient bucket copy of the trainable parameters (gradient_as_bucket_view off).
* Usable memory = (GPU memory - reserve) x (1 - fragmentation): the reserve (default 1 GiB) covers the CUDA context,
  cuBLAS/cuDNN workspaces and NCCL buffers, the fraction (default 10 %) the caching allocator's fragmentation.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

log = logging.getLogger(__name__)

GIB = 2**30
PLAN_STAGES = ("stage2", "stage3")
# bitsandbytes AdamW8bit (0.50 optim/optimizer.py): tensors under min_8bit_size keep fp32 states.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256


# -- CUDA's autocast policy on CPU tensors -----------------------------------------------------------------------------
# torch.amp docs, "CUDA Ops that can autocast to float32": these run in fp32 under CUDA autocast (output fp32, input
# copied to fp32 and saved for backward), while CPU autocast leaves them in bf16 (measured, torch 2.13). Only the ones
# these models run on large tensors matter for memory; pointwise fp32 ops on tiny tensors (timestep embeddings) too.
_CUDA_FP32_OPS = ("layer_norm", "group_norm", "softmax.int", "log_softmax.int", "exp", "pow.Tensor_Scalar", "rsqrt")


def _fp32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.float()
    return value


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """Within the block, CPU autocast runs `_CUDA_FP32_OPS` in fp32 as CUDA autocast does (a Python kernel for the
    AutocastCPU dispatch key: inputs cast to fp32, autocast excluded below, so autograd records the casts as CUDA's
    autocast would). The registrations are removed on exit."""
    lib = torch.library.Library("aten", "IMPL")
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def kernel(op):
        def run(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*[_fp32(a) for a in args], **{k: _fp32(v) for k, v in kwargs.items()})
        return run

    try:
        for name in _CUDA_FP32_OPS:
            base, _, overload = name.partition(".")
            lib.impl(name, kernel(getattr(getattr(torch.ops.aten, base), overload or "default")), "AutocastCPU")
        yield
    finally:
        lib._destroy()


# -- live bytes ------------------------------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages while operators run, with the peak.

    Every storage an operator returns is counted once (views, in-place and `out=` results share a storage: no new
    bytes) until the storage is freed; tensors that exist before (parameters, buffers, inputs) are added with
    `track`. Kinds: "grad" for `.grad` storages (`mark`, from a post-accumulate-grad hook) and "param_copy" for casts
    of a tracked weight (autocast's bf16 copies of fp32 weights) let the peaks be split: `peak` (all),
    `peak_without_grads`, `peak_without_grads_and_copies`.

    With `fake=True` (under FakeTensorMode) operators whose tensor inputs are all real run for real (the batch's small
    index tensors: `int(image_mask.sum())` needs a value), and reading a fake scalar (`.item()`, `float(loss)`) gives
    0: the values only feed log lines.
    """

    def __init__(self, fake: bool = False, count_flops: bool = False):
        super().__init__()
        self.fake = fake
        self.flops = 0
        self._flop_registry = None
        if count_flops:
            from torch.utils.flop_counter import flop_registry

            _register_cpu_flash_flops()
            self._flop_registry = flop_registry
        self._bytes: dict[int, int] = {}
        self._kind: dict[int, str] = {}
        self.weights: set[int] = set()
        self.live = 0
        self._by_kind = {"grad": 0, "param_copy": 0}
        self.peak = self.peak_without_grads = self.peak_without_grads_and_copies = 0

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def track(self, t: torch.Tensor, kind: str = "") -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._bytes:
            return
        n = st.nbytes()
        self._bytes[key] = n
        self.live += n
        if kind:
            self._kind[key] = kind
            if kind in self._by_kind:
                self._by_kind[kind] += n
        weakref.finalize(st, self._free, key)
        self._update_peaks()

    def track_weights(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self.track(t, "weight")
            self.weights.add(self._key(t))

    def mark(self, t: torch.Tensor, kind: str) -> None:
        """Re-classify a tracked storage (a gradient once it is accumulated into `.grad`)."""
        key = self._key(t)
        if key not in self._bytes:
            self.track(t, kind)
            return
        old = self._kind.get(key, "")
        if old in self._by_kind:
            self._by_kind[old] -= self._bytes[key]
        self._kind[key] = kind
        if kind in self._by_kind:
            self._by_kind[kind] += self._bytes[key]

    def _free(self, key: int) -> None:
        n = self._bytes.pop(key)
        self.live -= n
        kind = self._kind.pop(key, "")
        if kind in self._by_kind:
            self._by_kind[kind] -= n

    def _update_peaks(self) -> None:
        grads, copies = self._by_kind["grad"], self._by_kind["param_copy"]
        self.peak = max(self.peak, self.live)
        self.peak_without_grads = max(self.peak_without_grads, self.live - grads)
        self.peak_without_grads_and_copies = max(self.peak_without_grads_and_copies, self.live - grads - copies)

    def reset_peaks(self) -> None:
        grads, copies = self._by_kind["grad"], self._by_kind["param_copy"]
        self.peak, self.peak_without_grads = self.live, self.live - grads
        self.peak_without_grads_and_copies = self.live - grads - copies

    @property
    def grad_bytes(self) -> int:
        return self._by_kind["grad"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        if self.fake:
            from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

            tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
                return False if args[0].dtype == torch.bool else 0 if not args[0].is_floating_point() else 0.0
            if tensors and not any(isinstance(a, FakeTensor) for a in tensors):
                with unset_fake_temporarily():
                    return self._count(func, func(*args, **kwargs), args, kwargs)
        return self._count(func, func(*args, **kwargs), args, kwargs)

    def _count(self, func, out, args, kwargs):
        if self._flop_registry is not None and func.overloadpacket in self._flop_registry:
            # FlopCounterMode's formulas without FlopCounterMode: its module tracker's gradient hooks keep every
            # module's outputs alive, which would defeat activation checkpointing in the byte count.
            self.flops += self._flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        copy = func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) and \
            self._key(args[0]) in self.weights
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, "param_copy" if copy else "")
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (shared storages once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def adamw_state_bytes(numels: Iterable[int]) -> int:
    """torch AdamW: exp_avg and exp_avg_sq, fp32 like the fp32 master parameters (8 B per element)."""
    return sum(2 * 4 * n for n in numels)


def adamw8bit_state_bytes(numels: Iterable[int]) -> int:
    """bitsandbytes AdamW8bit: per tensor of >= 4096 elements two uint8 states and two fp32 absmax per 256-element
    block; smaller tensors keep two fp32 states."""
    total = 0
    for n in numels:
        total += 2 * (n + 4 * math.ceil(n / BNB_BLOCK)) if n >= BNB_MIN_8BIT_SIZE else 2 * 4 * n
    return total


# -- the stage's module without weights ------------------------------------------------------------------------------
@dataclass
class PlanModel:
    """The stage module built under `fake_mode` (or for real, fake_mode None), with what the plan reports of it."""
    stage: object
    module: nn.Module
    fake_mode: object | None
    architecture: str                                  # where the KOSMOS-G config came from
    parts: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # name -> (elements, bytes, dtype)
    trainable_numels: list[int] = field(default_factory=list)
    unit_bytes_bf16: list[int] = field(default_factory=list)   # FSDP layer units, bf16 bytes each
    root_bytes_bf16: int = 0                                   # KOSMOS-G parameters outside the layer units

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in self.module.frozen.values() if isinstance(m, nn.Module)]

    def weight_tensors(self) -> list[torch.Tensor]:
        tensors = [*self.module.parameters(), *self.module.buffers()]
        for m in self.frozen_modules():
            tensors += [*m.parameters(), *m.buffers()]
        return tensors

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, b, _ in self.parts.values())


def plan_kosmos_config(cfg, stage) -> tuple[object, str, bool]:
    """(the stage's KOSMOS-G config, where it came from, whether the frozen base is SDXL).

    KOSMOS-G: `[model] init`'s header when the file is here; else `[model] preset`, with the AlignerNet of
    `[model] aligner_preset` when that is set (the shipped SDXL configs name `sdxl`: the AlignerNet stage 2 creates,
    and the one stage 2's export hands to stage 3). The base is read from `[sd15] path` when it is a folder here
    (`base_kind`, as the trainer reads it); else it follows the KOSMOS-G model: SDXL when its AlignerNet has SDXL's
    heads."""
    from kosmos_g_core.checkpoint import read_header
    from kosmos_g_core.config import PRESETS

    from .sd15 import SDXL, base_kind, is_diffusers_folder
    from .stages.base import aligner_preset, stage_kosmos_config

    if cfg.model.init and Path(cfg.model.init).is_file():
        config, _ = read_header(cfg.model.init)
        where = f"[model] init {cfg.model.init}"
    else:
        if cfg.model.preset not in PRESETS:
            raise ValueError(f"[model] preset = {cfg.model.preset!r}: unknown; expected one of {sorted(PRESETS)}")
        config = PRESETS[cfg.model.preset]
        where = f"[model] preset {cfg.model.preset!r}"
        if cfg.model.aligner_preset:
            config = replace(config, aligner=aligner_preset(cfg, config.mllm.dim))
            where += f" with [model] aligner_preset {cfg.model.aligner_preset!r}"
        where += f" ([model] init {cfg.model.init} not found here)" if cfg.model.init else ""
    if cfg.sd15.path and is_diffusers_folder(Path(cfg.sd15.path)):
        sdxl = base_kind(cfg.sd15.path) == SDXL
    else:
        planned = stage_kosmos_config(cfg, config, stage.aligner_mode)
        sdxl = planned.aligner is not None and planned.aligner.is_sdxl
    return stage_kosmos_config(cfg, config, stage.aligner_mode, sdxl=sdxl), where, sdxl


def _dtype_name(dtypes: set[torch.dtype]) -> str:
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return "+".join(sorted(names.get(d, str(d)) for d in dtypes))


def build_plan_model(cfg, *, fake: bool = True) -> PlanModel:
    """The stage's module as `Stage.build_model` makes it, from architectures only: KOSMOS-G from `[model] init`'s
    header (when the file is here) or `[model] preset`, fp32 (master weights) like build_kosmos; the frozen base's
    parts from `[sd15] path`'s config.json files (when it is a diffusers folder here) or the base's own (SD1.5's, or
    SDXL's when the KOSMOS-G model is an SDXL one: `_kosmos_config`), in `frozen_dtype(cfg)`."""
    from kosmos_g_core.model import KosmosG
    from kosmos_g_core.tokenizer import KosmosTokenizer

    from .sd15 import build_sd15_parts, sd15_architectures
    from .stages.base import frozen_dtype, layer_units
    from .train import build_stage

    stage = build_stage(cfg.stage)
    if cfg.stage not in PLAN_STAGES:
        raise ValueError(f"--plan knows stages {', '.join(PLAN_STAGES)}; {cfg.source or 'the config'} is "
                         f"stage = {cfg.stage!r}")
    stage.check_config(cfg)
    config, where, sdxl = plan_kosmos_config(cfg, stage)
    fake_mode = None
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        kosmos = KosmosG(config, dtype=torch.float32)
        parts = build_sd15_parts(sd15_architectures(cfg.sd15.path, sdxl=sdxl), frozen_dtype(cfg),
                                 **dict.fromkeys(stage.sd15_parts, True))
    kosmos.tokenizer = KosmosTokenizer.bundled()
    if "text_encoder" in stage.sd15_parts:
        parts.tokenizer = _clip_tokenizer(cfg)
        if parts.is_sdxl:
            parts.tokenizer_2 = _clip_tokenizer(cfg, "tokenizer_2")
    if "unet" in stage.sd15_parts:
        from diffusers import DDPMScheduler

        from .sd15 import SD15_SCHEDULER

        parts.noise_scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    module = stage.assemble(cfg, kosmos, parts)
    plan = PlanModel(stage=stage, module=module, fake_mode=fake_mode, architecture=where)

    trainable = [p for p in module.kosmos.parameters() if p.requires_grad]
    frozen = [p for p in module.kosmos.parameters() if not p.requires_grad]
    plan.trainable_numels = [p.numel() for p in trainable]
    plan.parts["trainable KOSMOS-G"] = (sum(p.numel() for p in trainable), tensor_bytes(trainable),
                                       _dtype_name({p.dtype for p in trainable}))
    if frozen:
        plan.parts["frozen KOSMOS-G"] = (sum(p.numel() for p in frozen), tensor_bytes(frozen),
                                         _dtype_name({p.dtype for p in frozen}))
    buffers = list(module.kosmos.buffers())
    if buffers:
        plan.parts["KOSMOS-G buffers"] = (sum(b.numel() for b in buffers), tensor_bytes(buffers),
                                          _dtype_name({b.dtype for b in buffers}))
    for name, m in module.frozen.items():
        if isinstance(m, nn.Module):
            tensors = [*m.parameters(), *m.buffers()]
            plan.parts[f"frozen {'SDXL' if parts.is_sdxl else 'SD1.5'} {name}"] = (sum(t.numel() for t in m.parameters()), tensor_bytes(tensors),
                                                  _dtype_name({t.dtype for t in m.parameters()}))
    units = layer_units(module.kosmos)
    in_units = {id(p) for u in units for p in u.parameters()}
    plan.unit_bytes_bf16 = [2 * sum(p.numel() for p in u.parameters()) for u in units]
    plan.root_bytes_bf16 = 2 * sum(p.numel() for p in module.kosmos.parameters() if id(p) not in in_units)
    return plan


def _clip_tokenizer(cfg, sub: str = "tokenizer"):
    """Stage 2 tokenizes captions for the frozen CLIP text encoder(s): the config's tokenizer when it is here (SDXL's
    second one: `sub` = tokenizer_2 of the folder), else a small real CLIPTokenizer (the ids are always (B, 77),
    whatever the vocabulary)."""
    from .sd15 import load_clip_tokenizer
    from .tiny_assets import write_tiny_clip_tokenizer

    given = cfg.sd15.tokenizer if sub == "tokenizer" else ""
    for candidate in (given, Path(cfg.sd15.path) / sub if cfg.sd15.path else ""):
        if candidate and (Path(candidate) / "vocab.json").is_file():
            return load_clip_tokenizer(candidate)
    with tempfile.TemporaryDirectory(prefix="kosmos_g_plan_clip_") as tmp:  # read when the tokenizer is built
        return load_clip_tokenizer(write_tiny_clip_tokenizer(Path(tmp)))


# -- one simulated step ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleShape:
    """What one sample of the stage feeds the model (the loader pads a batch to its longest sample)."""
    text_tokens: int          # caption / instruction tokens (SentencePiece)
    images: int = 0           # input images per sample (each 66 positions: <image>, 64 slots, </image>)

    @property
    def tokens(self) -> int:
        return 1 + self.images * 66 + self.text_tokens  # <s> first

    def describe(self, image_size: int, target: int) -> str:
        images = f" + {self.images} images x 66" if self.images else ""
        text = f"{self.tokens} tokens (<s>{images} + {self.text_tokens} text)"
        if self.images:
            text += f", {self.images} input images {image_size} px"
        return text + (f", target {target} px" if target else "")


def default_sample_shape(cfg) -> SampleShape:
    """Stage 2: a caption at the loader's 85-token cap (the worst case it lets through). Stage 3: a compositional
    sample with two entity images and a 64-token caption (the heaviest kind of the 2:2:1 mix; editing has one image,
    captions none)."""
    from training.data.config import DEFAULT_MAX_CAPTION_TOKENS

    if cfg.stage == "stage2":
        return SampleShape(text_tokens=DEFAULT_MAX_CAPTION_TOKENS["stage2"])
    return SampleShape(text_tokens=64, images=2)


def synthetic_batch(plan: PlanModel, cfg, batch_size: int, shape: SampleShape) -> dict:
    """A batch of the stage's format (training/data/collate.py) with `shape`: index tensors real (small), images fake."""
    kosmos = plan.module.kosmos
    T = shape.tokens
    tokens = torch.full((batch_size, T), 5, dtype=torch.long)  # any non-pad id; <s> = 0 first
    tokens[:, 0] = 0
    image_mask = torch.zeros(batch_size, T, dtype=torch.bool)
    for i in range(shape.images):
        image_mask[:, 1 + i * 66 + 1: 1 + i * 66 + 65] = True  # the 64 slots after each first <image>
    batch: dict = {"tokens": tokens}
    if cfg.stage == "stage2":
        batch["captions"] = ["a photo of a dog"] * batch_size
        return batch
    size = kosmos.config.vision.image_size
    with plan.fake_mode if plan.fake_mode is not None else contextlib.nullcontext():
        batch["pixels"] = torch.zeros(batch_size * shape.images, 3, size, size)
        batch["target"] = torch.zeros(batch_size, 3, cfg.sd15.resolution, cfg.sd15.resolution)
    batch["image_mask"] = image_mask
    r = cfg.sd15.resolution
    batch["target_geometry"] = torch.tensor([[r, r, 0, 0, r, r]] * batch_size)  # (B, 6): SDXL's size conditioning
    return batch


@dataclass
class StepMemory:
    """One simulated micro-step (bytes above the weights that exist before it)."""
    micro_batch: int
    checkpointing: bool
    peak: int                 # forward + backward with no gradients before (accumulation 1: grads appear in backward)
    activations: int          # max of live bytes beyond weights and gradients: the working set of the step
    activations_no_copies: int  # the same without autocast's copies of weights (what FSDP2 with bf16 compute holds)
    flops: float              # counted FLOPs, forward + backward (+ recompute when checkpointing)
    grad_bytes: int = 0       # gradients after backward (= trainable bytes in their dtype)
    state_bytes: int = 0      # optimizer states after the step (when simulated)
    optimizer_temporaries: int = 0  # the step's peak beyond weights + grads + states


def _register_cpu_flash_flops() -> None:
    """FlopCounterMode counts CUDA's attention kernels but not the CPU flash kernel fake tensors run: count it with
    the same formulas (same maths)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs):
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _autocast(cfg):
    from .train import autocast_dtype

    dtype = autocast_dtype(cfg.parallel.precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def build_optimizer_for(params: list[nn.Parameter], cfg, kind: str) -> torch.optim.Optimizer:
    """torch AdamW with the trainer's hyper-parameters (training/optim.py) and a given implementation: "foreach"
    (torch's default for CUDA tensors), "fused" (`optim.fused = true`) or "single" (tensor by tensor: torch's default
    for CPU tensors, what a CPU run of the trainer uses)."""
    o = cfg.optim
    extra = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}[kind]
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, **extra)


def simulate_step(plan: PlanModel, cfg, batch: dict, *, checkpointing: bool, optimizer: str = "",
                  policy: str = "cuda") -> StepMemory:
    """Run Trainer.step's memory-relevant work once on `batch` (training/train.py: forward under autocast, loss /
    grad_accum backward, clip, optimizer step, zero_grad(set_to_none)) and measure it with LiveBytes.

    optimizer: "" (no step), or a `build_optimizer_for` kind (states measured, then dropped with the gradients).
    policy: "cuda" (autocast as on a GPU) or "cpu" (as this machine's autocast, to compare with a real CPU run)."""
    stage, module = plan.stage, plan.module
    stage.set_activation_checkpointing(module, cfg, checkpointing)
    module.train()
    fake = plan.fake_mode is not None
    gc.collect()  # earlier simulations' garbage is not this step's
    tracker = LiveBytes(fake=fake, count_flops=True)
    tracker.track_weights(plan.weight_tensors())
    base = tracker.live
    params = [p for p in module.kosmos.parameters() if p.requires_grad]
    hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark(p.grad, "grad")) for p in params]
    modes = contextlib.ExitStack()
    if fake:
        modes.enter_context(plan.fake_mode)
    if policy == "cuda":  # through backward too: activation checkpointing recomputes under the forward's autocast
        modes.enter_context(cuda_autocast_policy())
    try:
        with modes:
            with tracker:
                with _autocast(cfg):
                    loss, _ = stage.loss(module, batch, 0)
                (loss / cfg.run.grad_accum).backward()
                del loss
            result = StepMemory(
                micro_batch=_batch_size(batch), checkpointing=checkpointing, peak=tracker.peak - base,
                activations=tracker.peak_without_grads - base,
                activations_no_copies=tracker.peak_without_grads_and_copies - base,
                flops=float(tracker.flops), grad_bytes=tracker.grad_bytes)
            if optimizer:
                opt = build_optimizer_for(params, cfg, optimizer)
                gc.collect()
                with tracker:
                    tracker.reset_peaks()
                    if cfg.optim.clip_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm)
                    opt.step()
                    states = [t for s in opt.state.values() for t in s.values()
                              if isinstance(t, torch.Tensor) and t.dim() > 0]
                    result.state_bytes = tensor_bytes(states)
                    result.optimizer_temporaries = max(
                        0, tracker.peak - base - tracker.grad_bytes - result.state_bytes)
                    opt.zero_grad(set_to_none=True)
                del opt, states
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.grad = None
    return result


def _batch_size(batch: dict) -> int:
    return int(batch["tokens"].shape[0])


# -- the plan --------------------------------------------------------------------------------------------------------
OPTIMIZERS = {
    "adamw": "AdamW (torch, foreach)",
    "adamw_fused": "AdamW fused",
    "adamw8bit": "AdamW8bit (bnb) *",
}


@dataclass
class Row:
    strategy: str
    optimizer: str
    checkpointing: bool
    micro_batch: int
    accum: int
    weights: int
    grads: int
    states: int
    activations: int
    peak: int
    fits: bool
    samples_per_s: float | None


@dataclass
class Plan:
    cfg: object
    model: PlanModel
    shape: SampleShape
    gpus: int
    gpu_memory_gib: float
    usable: int
    reserve_gib: float
    fragmentation: float
    steps: dict[tuple[int, bool], StepMemory]
    temporaries: dict[str, int]
    peak_tflops: float | None
    peak_source: str
    utilisation: float
    rows: list[Row]
    configured: list[Row]


def micro_batches(effective: int) -> list[int]:
    """The effective per-GPU batch, halved while even, then 1: micro-batch sizes with a whole accumulation count."""
    out = [effective]
    while out[-1] % 2 == 0 and out[-1] > 1:
        out.append(out[-1] // 2)
    if out[-1] != 1:
        out.append(1)
    return out


def make_plan(cfg, *, gpu_memory_gib: float, gpus: int = 1, shape: SampleShape | None = None,
              batches: list[int] | None = None, reserve_gib: float = 1.0, fragmentation: float = 0.10,
              peak_tflops: float | None = None, peak_source: str = "", utilisation: float = 0.40,
              policy: str = "cuda") -> Plan:
    """Simulate the stage at every micro-batch of `batches` (default: halvings of the configured per-GPU batch; the
    configured one always) with activation checkpointing on and off, then price every setting for `gpus` GPUs of
    `gpu_memory_gib`."""
    if gpus < 1 or gpu_memory_gib <= 0:
        raise ValueError(f"--gpus must be >= 1 and --gpu-memory > 0 (got {gpus}, {gpu_memory_gib})")
    t0 = time.perf_counter()
    model = build_plan_model(cfg)
    shape = shape or default_sample_shape(cfg)
    effective = int(cfg.data["batch_size"]) * cfg.run.grad_accum
    # The configured micro-batch is always simulated: the "as configured" row.
    batches = sorted(set(batches or micro_batches(effective)) | {int(cfg.data["batch_size"])}, reverse=True)
    log.info("plan: built %s in %.1f s; simulating micro-batches %s, checkpointing on/off", cfg.stage,
             time.perf_counter() - t0, batches)
    steps: dict[tuple[int, bool], StepMemory] = {}
    temporaries: dict[str, int] = {}
    states = 0
    for ckpt in (True, False):
        for b in batches:
            t1 = time.perf_counter()
            optimizer = "foreach" if (ckpt, b) == (True, batches[-1]) else ""
            batch = synthetic_batch(model, cfg, b, shape)
            steps[b, ckpt] = simulate_step(model, cfg, batch, checkpointing=ckpt, optimizer=optimizer, policy=policy)
            if optimizer:
                temporaries["adamw"] = steps[b, ckpt].optimizer_temporaries
                states = steps[b, ckpt].state_bytes
            log.info("plan: micro-batch %d, checkpointing %s: peak +%.2f GiB, activations %.2f GiB (%.1f s)", b,
                     "on" if ckpt else "off", steps[b, ckpt].peak / GIB, steps[b, ckpt].activations / GIB,
                     time.perf_counter() - t1)
    expected = adamw_state_bytes(model.trainable_numels)
    if states != expected:  # the formula the plan prices is the optimizer's real behaviour, or the plan says so
        raise RuntimeError(f"simulated AdamW states {states} B differ from 2 x 4 B x trainable = {expected} B")
    # Fused AdamW updates in one kernel (no foreach temporaries); bitsandbytes updates tensor by tensor in place.
    temporaries["adamw_fused"] = 0
    temporaries["adamw8bit"] = 0
    usable = int((gpu_memory_gib - reserve_gib) * (1 - fragmentation) * GIB)
    plan = Plan(cfg=cfg, model=model, shape=shape, gpus=gpus, gpu_memory_gib=gpu_memory_gib, usable=usable,
                reserve_gib=reserve_gib, fragmentation=fragmentation, steps=steps, temporaries=temporaries,
                peak_tflops=peak_tflops, peak_source=peak_source, utilisation=utilisation, rows=[], configured=[])
    plan.rows = price_all(plan, effective)
    plan.configured = [r for r in plan.rows if r.micro_batch == int(cfg.data["batch_size"])
                       and r.checkpointing == cfg.model.activation_checkpointing
                       and r.strategy == _strategy_name(cfg.parallel.strategy, gpus)
                       and r.optimizer == ("adamw_fused" if cfg.optim.fused else "adamw")]
    return plan


def _strategy_name(strategy: str, gpus: int) -> str:
    return "fsdp" if strategy == "fsdp" else ("ddp" if gpus > 1 else "single")


def price(plan: Plan, step: StepMemory, *, strategy: str, optimizer: str, accum: int) -> Row:
    """Bytes per GPU of one setting (see the module docstring for the formulas)."""
    m, n = plan.model, plan.gpus
    grads = sum(4 * k for k in m.trainable_numels)
    states = adamw8bit_state_bytes(m.trainable_numels) if optimizer == "adamw8bit" else \
        adamw_state_bytes(m.trainable_numels)
    temporaries = plan.temporaries[optimizer]
    weights = m.weight_bytes
    if strategy == "fsdp":
        kosmos = sum(b for name, (_, b, _) in m.parts.items() if "KOSMOS-G" in name)
        bf16 = plan.cfg.parallel.precision == "bf16"
        gathered = (m.root_bytes_bf16 + 3 * max(m.unit_bytes_bf16, default=0)) * (1 if bf16 else 2)
        weights = kosmos // n + (weights - kosmos) + gathered
        grads, states, temporaries = grads // n, states // n, temporaries // n
        activations = step.activations_no_copies if bf16 else step.activations
        forward_backward = weights + states + grads + activations
    else:
        activations = step.activations
        # Accumulation 1: gradients appear during backward as activations are freed (the simulated peak); later
        # micro-steps of an accumulation keep every gradient beside the activations.
        forward_backward = weights + states + (grads + activations if accum > 1 else step.peak)
        if strategy == "ddp":
            forward_backward += grads  # DDP's gradient buckets
    peak = max(forward_backward, weights + grads + states + temporaries)
    speed = None
    if plan.peak_tflops and step.flops:
        speed = plan.utilisation * plan.peak_tflops * 1e12 / (step.flops / step.micro_batch) * n
    return Row(strategy=strategy, optimizer=optimizer, checkpointing=step.checkpointing,
               micro_batch=step.micro_batch, accum=accum, weights=weights, grads=grads, states=states,
               activations=activations, peak=peak, fits=peak <= plan.usable, samples_per_s=speed)


def price_all(plan: Plan, effective: int) -> list[Row]:
    rows = []
    strategies = [_strategy_name("ddp", plan.gpus), "fsdp"]
    for strategy in strategies:
        for optimizer in OPTIMIZERS:
            for (b, _ckpt), step in plan.steps.items():
                rows.append(price(plan, step, strategy=strategy, optimizer=optimizer, accum=max(1, effective // b)))
    return rows


def best_rows(plan: Plan) -> list[Row]:
    """Per strategy, optimizer and checkpointing: the largest micro-batch that fits, else the smallest tried."""
    out = []
    groups: dict[tuple, list[Row]] = {}
    for r in plan.rows:
        groups.setdefault((r.strategy, r.optimizer, r.checkpointing), []).append(r)
    for rows in groups.values():
        fitting = [r for r in rows if r.fits]
        out.append(max(fitting, key=lambda r: r.micro_batch) if fitting else min(rows, key=lambda r: r.micro_batch))
    return out


def overrides_for(row: Row, cfg) -> str:
    """The trainer's dotted overrides for a row (8-bit AdamW has none: the trainer does not offer it)."""
    parts = [f"data.batch_size={row.micro_batch}", f"run.grad_accum={row.accum}",
             f"model.activation_checkpointing={'true' if row.checkpointing else 'false'}"]
    if cfg.stage == "stage3":
        parts.append(f"sd15.gradient_checkpointing={'true' if row.checkpointing else 'false'}")
    parts.append("parallel.strategy=" + ("fsdp" if row.strategy == "fsdp" else "ddp"))
    if row.optimizer == "adamw_fused":
        parts.append("optim.fused=true")
    return " ".join(parts)


def _gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def format_plan(plan: Plan) -> str:
    cfg, m = plan.cfg, plan.model
    kosmos = m.module.kosmos
    lines = [
        f"memory plan: {cfg.stage} ({cfg.source or 'config'}), {plan.gpus} x {plan.gpu_memory_gib:g} GiB GPU, "
        f"precision {cfg.parallel.precision}",
        f"usable per GPU: {_gib(plan.usable)} GiB = ({plan.gpu_memory_gib:g} - {plan.reserve_gib:g} GiB CUDA context "
        f"and workspaces) x (1 - {plan.fragmentation:g} fragmentation)",
        f"model: KOSMOS-G from {m.architecture}",
    ]
    width = max(24, *(len(name) for name in m.parts))  # 24: the SD1.5 names; SDXL's text_encoder_2 is longer
    for name, (numel, nbytes, dtype) in m.parts.items():
        lines.append(f"  {name:<{width}} {numel / 1e6:9.1f} M  {dtype:<5} {_gib(nbytes):>6} GiB")
    tr = sum(m.trainable_numels)
    lines.append(f"  gradients {_gib(4 * tr)} GiB (fp32); AdamW states {_gib(adamw_state_bytes(m.trainable_numels))} "
                 f"GiB (2 x fp32, simulated step agrees), 8-bit {_gib(adamw8bit_state_bytes(m.trainable_numels))} GiB")
    lines.append(f"  AdamW foreach step temporaries {_gib(plan.temporaries['adamw'])} GiB (simulated; fused: none)")
    lines.append("per sample: " + plan.shape.describe(kosmos.config.vision.image_size,
                                                        cfg.sd15.resolution if cfg.stage == "stage3" else 0))
    batches = sorted({b for b, _ in plan.steps}, reverse=True)
    lines.append("simulated micro-step, GiB above the weights (peak with fresh gradients / activations beyond "
                 "weights+grads):")
    lines.append("  micro-batch          " + "".join(f"{b:>13}" for b in batches))
    for ckpt in (True, False):
        cells = "".join(f"{_gib(plan.steps[b, ckpt].peak):>6} / {_gib(plan.steps[b, ckpt].activations):<5}"
                        for b in batches)
        lines.append(f"  checkpointing {'on ' if ckpt else 'off'}    {cells}")
    b0 = batches[-1]
    model_flops = plan.steps[b0, False].flops / b0
    hw_flops = plan.steps[b0, True].flops / b0
    lines.append(f"FLOPs per sample (forward + backward): {model_flops / 1e12:.3f} TFLOP model, "
                 f"{hw_flops / 1e12:.3f} TFLOP with checkpointing's recompute")
    if plan.peak_tflops:
        lines.append(f"samples/s = {plan.utilisation:.2f} x {plan.peak_tflops:g} TFLOP/s ({plan.peak_source}) / "
                     "FLOPs per sample of the setting x GPUs (assumed utilisation of the dense bf16 peak; "
                     "communication not modelled)")
    else:
        lines.append("samples/s: pass --gpu NAME or --peak-tflops for the expected speed")
    header = (f"{'strategy':<8} {'optimizer':<22} {'ckpt':<4} {'micro x accum':>13} {'weights':>8} {'grads':>6} "
              f"{'optim':>6} {'activ':>6} {'peak':>6}  {'fits':<4} {'samples/s':>9}")

    def row_text(r: Row) -> str:
        speed = f"{r.samples_per_s:9.1f}" if r.samples_per_s is not None else f"{'n/a':>9}"
        return (f"{r.strategy:<8} {OPTIMIZERS[r.optimizer]:<22} {'on' if r.checkpointing else 'off':<4} "
                f"{f'{r.micro_batch} x {r.accum}':>13} {_gib(r.weights):>8} {_gib(r.grads):>6} {_gib(r.states):>6} "
                f"{_gib(r.activations):>6} {_gib(r.peak):>6}  {'yes' if r.fits else 'no':<4} {speed}")

    lines += ["", "peak = max(forward/backward peak, optimizer-step peak). Accumulation 1: gradients appear in backward as "
              "activations are freed, so the peak is below weights+grads+optim+activ (simulated, not summed). fsdp "
              "weights include the gathered bf16 units. * = not in the trainer.",
              "", "as configured (GiB per GPU):", header, *[row_text(r) for r in plan.configured]]
    best = best_rows(plan)
    lines += ["", "largest micro-batch that fits per setting (effective batch kept by accumulation; GiB per GPU):",
              header, *[row_text(r) for r in best]]
    fitting = sorted([r for r in best if r.fits], key=lambda r: -(r.samples_per_s or r.micro_batch))
    in_trainer = [r for r in fitting if r.optimizer != "adamw8bit"]
    lines.append("")
    if in_trainer:
        lines.append("fastest setting the trainer has: " + overrides_for(in_trainer[0], cfg))
    else:
        lines.append("no setting the trainer has fits")
    if fitting and fitting[0].optimizer == "adamw8bit":
        lines.append("fastest with bitsandbytes AdamW8bit (*not in the trainer): " + overrides_for(fitting[0], cfg))
    frozen = m.parts.get("frozen KOSMOS-G")
    if frozen and frozen[2] == "fp32" and frozen[1] >= GIB // 100:
        lines.append(f"frozen KOSMOS-G parts are fp32 masters in the trainer; in bf16 they would take "
                     f"{_gib(frozen[1] / 2)} GiB less (not a trainer option)")
    return "\n".join(lines) + "\n"

