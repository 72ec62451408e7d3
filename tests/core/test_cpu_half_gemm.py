"""The core's Linear runs half-precision CPU inference products in fp32 where the CPU has no half-precision GEMM
(kosmos_g_core/ops.py): the same maths as a native GEMM (fp32 sums, one rounding of the output), so results agree
within one rounding of the output dtype; parameters, init and state dicts are nn.Linear's; autograd is untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from kosmos_g_core.config import PRESETS
from kosmos_g_core.mllm import MLLM
from kosmos_g_core.model import KosmosG
from kosmos_g_core.ops import CoreOps, Linear, cpu_half_gemm, cpu_has_native_gemm, gemm_in_fp32
from kosmos_g_core.prompt import InterleavedPrompt


def _within_one_rounding(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """|a - b| <= one unit in the last place of `dtype` at b's magnitude (and a tiny floor near zero)."""
    eps = torch.finfo(dtype).eps  # spacing at 1.0
    bound = b.float().abs().clamp_min(1e-3) * eps
    return bool(((a.float() - b.float()).abs() <= bound).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_product_agrees_with_native_gemm_within_one_rounding(dtype):
    torch.manual_seed(0)
    layer = Linear(256, 384, dtype=dtype)
    x = torch.randn(3, 17, 256, dtype=dtype)
    with torch.inference_mode():
        with cpu_half_gemm("fp32"):
            ours = layer(x)
        with cpu_half_gemm("native"):
            native = layer(x)
    assert ours.dtype == dtype and ours.shape == (3, 17, 384)
    # exactly the fp32 product of the same operands, rounded once
    exact = F.linear(x.float(), layer.weight.float(), layer.bias.float()).to(dtype)
    assert torch.equal(ours, exact)
    assert torch.equal(native, F.linear(x, layer.weight, layer.bias))
    assert _within_one_rounding(ours, native, dtype)


def test_auto_follows_the_cpu_and_fp32_is_never_rerouted():
    w = torch.zeros(4, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        assert gemm_in_fp32(torch.zeros(2, 4, dtype=torch.bfloat16), w) == (not cpu_has_native_gemm(torch.bfloat16))
        with cpu_half_gemm("fp32"):
            assert not gemm_in_fp32(torch.zeros(2, 4), torch.zeros(4, 4))  # fp32 input: plain F.linear
            assert not gemm_in_fp32(torch.zeros(2, 4, dtype=torch.bfloat16), torch.zeros(4, 4))  # mixed: plain
    assert cpu_has_native_gemm(torch.float32)
    with pytest.raises(ValueError, match="expected one of"):
        with cpu_half_gemm("fast"):
            pass


def test_autograd_keeps_the_plain_product():
    """Under autograd the fp32 copy of the weight would be saved for backward: the fast path is off there."""
    torch.manual_seed(0)
    layer = Linear(8, 5, dtype=torch.bfloat16)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    with cpu_half_gemm("fp32"):
        y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    y.float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16


def test_same_parameters_init_and_keys_as_nn_linear():
    torch.manual_seed(3)
    ours = Linear(6, 4)
    torch.manual_seed(3)
    theirs = nn.Linear(6, 4)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())


def test_whole_model_encode_in_bf16_agrees_between_paths(kosmos_tokenizer):
    """The tiny model's conditioning with fp32 products vs torch's own bf16 GEMMs, the model built with the default
    ops (every Linear is ours): the MLLM hidden states agree to bf16 rounding noise, not bit for bit, since each
    layer's rounded outputs feed the next."""
    torch.manual_seed(0)
    model = KosmosG(PRESETS["tiny"], dtype=torch.bfloat16).eval()
    model.tokenizer = kosmos_tokenizer
    assert type(model.mllm.layers[0].ffn.fc1) is CoreOps.Linear is Linear
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(40, 33, 3, generator=g) * 255).byte().numpy())
    batch = model.collate([InterleavedPrompt.from_text("a <i> on a beach", [image])])
    with torch.inference_mode():
        embeds = model.encode_images(batch.pixels.to(torch.bfloat16))
        with cpu_half_gemm("fp32"):
            ours = model.mllm_forward(batch.tokens, embeds, batch.image_mask).float()
        with cpu_half_gemm("native"):
            native = model.mllm_forward(batch.tokens, embeds, batch.image_mask).float()
    scale = native.abs().max()
    rel = float((ours - native).abs().max() / scale)
    assert rel <= 4 * torch.finfo(torch.bfloat16).eps, rel  # measured: 0.0046, about 0.6 bf16 eps


def test_fp32_products_are_as_close_to_fp32_maths_as_the_native_gemm():
    """Against the same bf16 weights computed entirely in fp32, the fast path's hidden states are no farther than
    torch's bf16 GEMM's: the two bf16 paths differ by rounding noise, not by a loss of accuracy. An MLLM 512 wide
    (at the tiny preset's 128, oneDNN's bf16 and fp32 products round alike and the paths are bit-identical). At the
    official size, measured once: 1.09 % vs 1.10 % relative RMS from fp32 maths, 1.15 % from each other."""
    config = dataclasses.replace(PRESETS["tiny"].mllm, dim=512, ffn_dim=2048, layers=4, heads=8, vocab_size=1000)
    torch.manual_seed(0)
    mllm = MLLM(config, dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 1000, (2, 64), generator=gen)
    with torch.inference_mode():
        with cpu_half_gemm("fp32"):
            fast = mllm(tokens, None, None, dtype=torch.bfloat16).float()
        with cpu_half_gemm("native"):
            native = mllm(tokens, None, None, dtype=torch.bfloat16).float()
        truth = mllm.float()(tokens, None, None, dtype=torch.float32)

    def rel(x: torch.Tensor, ref: torch.Tensor = truth) -> float:
        return float((x - ref).norm() / ref.norm())

    assert rel(fast, native) > 0  # the paths do differ at this width (measured 0.41 %) ...
    assert rel(fast) <= 1.05 * rel(native), (rel(fast), rel(native))  # ... by noise: 0.664 % vs 0.666 % measured
    assert rel(native) < 0.02
