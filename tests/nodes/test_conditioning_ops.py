"""CONDITIONING rules without ComfyUI: KOSMOS-G + CLIP concatenation, and the SD1.5 check's messages."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def ops(pack):
    return pack("nodes.conditioning_ops")


def test_to_conditioning_is_a_list_of_tensor_and_dict(ops):
    cond = ops.to_conditioning(torch.zeros(2, 77, 768))
    assert len(cond) == 1 and cond[0][0].shape == (2, 77, 768) and cond[0][1] == {}
    with pytest.raises(ValueError, match="expected a conditioning tensor"):
        ops.to_conditioning(torch.zeros(77, 768))


def test_concat_appends_clip_tokens_after_kosmos_g(ops):
    kosmos = [[torch.ones(1, 77, 768), {"strength": 1.0}]]
    clip = [[torch.full((1, 154, 768), 2.0), {"pooled_output": torch.zeros(1, 768)}]]
    (tensor, options), = ops.concat_clip(kosmos, clip, clip_strength=0.5)
    assert tensor.shape == (1, 77 + 154, 768)
    assert torch.all(tensor[:, :77] == 1) and torch.all(tensor[:, 77:] == 1.0)  # 2.0 * 0.5
    assert options == {"strength": 1.0} and options is not kosmos[0][1]


def test_concat_broadcasts_a_single_prompt_over_a_batch(ops):
    batch = [[torch.zeros(3, 77, 768), {}]]
    single = [[torch.ones(1, 77, 768), {}]]
    assert ops.concat_clip(batch, single)[0][0].shape == (3, 154, 768)
    assert ops.concat_clip(single, [[torch.ones(2, 77, 768), {}]])[0][0].shape == (2, 154, 768)
    with pytest.raises(ValueError, match="a batch of 3 and the CLIP conditioning a batch of 2"):
        ops.concat_clip(batch, [[torch.ones(2, 77, 768), {}]])


def test_concat_explains_an_sdxl_clip(ops):
    with pytest.raises(ValueError, match=r"2048-dimensional but KOSMOS-G's is 768.*SDXL"):
        ops.concat_clip([[torch.zeros(1, 77, 768), {}]], [[torch.zeros(1, 77, 2048), {}]])


def test_sd15_check_messages(ops):
    assert ops.sd15_problem(768, "SD15") is None
    assert "SDXL" in ops.sd15_problem(2048, "SDXL") and "Stable Diffusion 1.5" in ops.sd15_problem(2048, "SDXL")
    assert "Stable Diffusion 2.x" in ops.sd15_problem(1024, "SD21")
    assert "without cross-attention" in ops.sd15_problem(None, "Flux")
