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


# ------------------------------------------------------------------------------------------------------ SDXL


def test_sdxl_conditioning_has_the_pooled_vector_and_the_sizes(ops):
    """What CLIP Text Encode (SDXL) puts in the dict (comfy_extras/nodes_clip_sdxl.py): pooled_output and the six
    size values, here with that node's defaults."""
    assert ops.SDXL_SIZE_DEFAULTS == {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
                                      "target_width": 1024, "target_height": 1024}
    pooled = torch.zeros(2, 1280)
    (tensor, options), = ops.to_conditioning(torch.zeros(2, 77, 2048), pooled, ops.SDXL_SIZE_DEFAULTS)
    assert tensor.shape == (2, 77, 2048) and options["pooled_output"] is pooled
    assert {k: v for k, v in options.items() if k != "pooled_output"} == ops.SDXL_SIZE_DEFAULTS
    # Without sizes (KOSMOS-G Text Encode, like plain CLIP Text Encode): only the pooled vector.
    assert set(ops.to_conditioning(torch.zeros(1, 77, 2048), torch.zeros(1, 1280))[0][1]) == {"pooled_output"}


def test_sdxl_conditioning_is_checked(ops):
    with pytest.raises(ValueError, match=r"pooled vector has shape \(1, 1280\); expected \(2, P\)"):
        ops.to_conditioning(torch.zeros(2, 77, 2048), torch.zeros(1, 1280))
    with pytest.raises(ValueError, match="size conditioning belongs to SDXL"):
        ops.to_conditioning(torch.zeros(1, 77, 768), None, {"width": 512})
    with pytest.raises(ValueError, match=r"unknown size conditioning \['aesthetic_score'\]"):
        ops.to_conditioning(torch.zeros(1, 77, 2048), torch.zeros(1, 1280), {"aesthetic_score": 6})


def test_concat_of_an_sdxl_file_with_an_sdxl_clip(ops):
    """Both 2048-d: the CLIP tokens follow KOSMOS-G's and KOSMOS-G's pooled vector and sizes stay."""
    pooled = torch.ones(1, 1280)
    kosmos = ops.to_conditioning(torch.zeros(1, 77, 2048), pooled, {"width": 1024})
    clip = [[torch.ones(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    (tensor, options), = ops.concat_clip(kosmos, clip)
    assert tensor.shape == (1, 154, 2048) and options["pooled_output"] is pooled and options["width"] == 1024
    with pytest.raises(ValueError, match=r"768-dimensional but KOSMOS-G's is 2048; .*\(SDXL, 2048-d\), not SD1.5's"):
        ops.concat_clip(kosmos, [[torch.zeros(1, 77, 768), {}]])


def test_the_sd15_check_points_an_sdxl_model_to_the_kosmos_g_input(ops):
    assert "connect its Load KOSMOS-G to this node's kosmos_g input" in ops.sd15_problem(2048, "SDXL")
    assert "kosmos_g input" not in ops.sd15_problem(1024, "SD21")


@pytest.mark.parametrize(("model", "file", "expected"), [
    ((768, None), (768, None), None),
    ((2048, 2816), (2048, 1280), None),
    ((768, None), (2048, 1280), "this KOSMOS-G file (xl.safetensors) is for SDXL (2048-d context + 1280-d pooled) "
                                "but the connected MODEL (SD15) is SD1.5 (768-d). Load a checkpoint of the same base as "
                                "the KOSMOS-G file (SDXL)"),
    ((2048, 2816), (768, None), "this KOSMOS-G file (xl.safetensors) is for SD1.5 (768-d) but the connected MODEL "
                                "(SD15) is SDXL (2048-d context + 1280-d pooled). Load a checkpoint of the same base "
                                "as the KOSMOS-G file (SD1.5)"),
    ((1280, 2560), (2048, 1280), "the connected MODEL (SD15) is the SDXL refiner (1280-d context, 2560-wide ADM"),
    ((1024, None), (768, None), "the connected MODEL (SD15) is SD2.x (1024-d)"),
    ((2048, None), (2048, 1280), "is an unusual model (2048-d)"),
])
def test_model_check_against_the_file(ops, model, file, expected):
    problem = ops.model_problem(*model, "SD15", *file, "xl.safetensors")
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "or a KOSMOS-G file made for the MODEL's base" in problem
