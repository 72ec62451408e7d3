"""The core's own layer classes (the default `ops` namespace of every module): torch.nn's, with one CPU fast path.

On a CPU without half-precision dot-product instructions (no AVX512-BF16 / AMX-BF16 for bf16, no AMX-FP16 for
fp16, e.g. AMD Zen 3 or Intel before Cooper Lake), PyTorch's bf16/fp16 GEMMs convert as they go and run 3-4x slower
than fp32 GEMMs of the same shape (measured on a 2-core Zen 3: a (134, 2048) x (2048, 8192) product takes 262 ms in
bf16, 76 ms in fp32, 91 ms for fp32 with both operands converted first; `python -m benchmarks.core` prints the
machine's own rates). There, `Linear` runs its product in fp32 on converted operands and rounds the result back:
the same maths as a native half-precision GEMM (products summed in fp32, one rounding of the output), so
activations, weights and state dicts keep their dtype and outputs agree within one rounding of the output dtype.
Only one layer's weight is converted at a time (at most 64 MB for the full model's largest Linear), never kept.

The fast path is for inference only (no autograd graph: `torch.no_grad` / `inference_mode`): under autograd the
converted weight would be saved for backward, a second copy of every weight. `cpu_half_gemm("native")` turns it off
(the benchmark times both paths); `"fp32"` forces it; `"auto"` (default) decides from the CPU's instructions.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

HALF_GEMM_MODES = ("auto", "native", "fp32")
_mode: contextvars.ContextVar[str] = contextvars.ContextVar("kosmos_g_cpu_half_gemm", default="auto")


@functools.cache
def cpu_has_native_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU has dot-product instructions for `dtype` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16), which
    oneDNN uses for half-precision GEMMs. fp32 is always native. Unknown to this torch build: assume native, so the
    plain nn.Linear path is kept."""
    probes = {torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
              torch.float16: ("_is_amx_fp16_supported",)}
    if dtype not in probes:
        return True
    found = [getattr(torch.cpu, name, None) for name in probes[dtype]]
    if any(fn is None for fn in found):
        return True
    return any(fn() for fn in found)


@contextlib.contextmanager
def cpu_half_gemm(mode: str) -> Iterator[None]:
    """Within the block, half-precision CPU inference Linears use `mode`: "auto" (fp32 products where the CPU has no
    native half-precision GEMM), "native" (always torch's own half-precision GEMM) or "fp32" (always fp32 products)."""
    if mode not in HALF_GEMM_MODES:
        raise ValueError(f"cpu_half_gemm mode {mode!r}: expected one of {HALF_GEMM_MODES}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


def gemm_in_fp32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether F.linear(x, weight) should run as an fp32 product (see the module docstring)."""
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    mode = _mode.get()
    return mode == "fp32" or (mode == "auto" and not cpu_has_native_gemm(x.dtype))


class Linear(nn.Linear):
    """nn.Linear (same parameters, state-dict keys and initialisation) with the CPU fast path of this module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gemm_in_fp32(x, self.weight):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


class CoreOps:
    """The `ops` namespace the core builds with by default: torch.nn's layers, `Linear` from this module. ComfyUI
    passes its own casting namespace instead (nodes/kosmos_g_model.py)."""

    Linear = Linear
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding
    Conv2d = nn.Conv2d
