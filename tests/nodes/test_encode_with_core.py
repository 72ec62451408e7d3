"""The builder's prompts through the real core with a tiny random KOSMOS-G: shapes, batch rule, null negative,
length limit (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_model(kosmos_tokenizer, tmp_path_factory):
    from kosmos_g_core import KosmosG, KosmosGConfig, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("kosmos") / "tiny.safetensors"
    save_checkpoint(path, KosmosG(KosmosGConfig.tiny()).state_dict(), kosmos_tokenizer, KosmosGConfig.tiny())
    return load_checkpoint(path, dtype=torch.float16)  # fp16 on CPU: what `auto` picks in ComfyUI --cpu


@pytest.fixture(scope="module")
def pi(pack):
    return pack("nodes.prompt_inputs")


def slot(pi, k: int, img):
    return pi.ImageSlot(f"image_{k}", img, None, f"mask_{k}")


def test_one_prompt_gives_77x768_positive_and_null_negative(pi, tiny_model):
    prompts = pi.build_prompts("<i> wearing <i>", [slot(pi, 1, torch.rand(1, 40, 30, 3)),
                                                     slot(pi, 2, torch.rand(1, 20, 50, 4))])
    cond, uncond = tiny_model.encode(list(prompts))
    assert cond.shape == uncond.shape == (1, 77, 768)
    assert torch.isfinite(cond).all()
    with torch.inference_mode():  # as encode runs: half-precision CPU products in fp32 (kosmos_g_core/ops.py)
        assert torch.equal(uncond, tiny_model.null_condition())
    (text_null,) = tiny_model.encode(list(pi.text_prompt("")))[:1]
    assert torch.allclose(text_null, uncond)


def test_a_prompt_batch_gives_one_row_per_prompt(pi, tiny_model):
    a = pi.build_prompts("a photo of <i>", [slot(pi, 1, torch.rand(1, 32, 32, 3))])
    b = pi.build_prompts("a red car", [])
    cond, uncond = tiny_model.encode(list(pi.batch_prompts([a, b])))
    assert cond.shape == uncond.shape == (2, 77, 768)
    alone, _ = tiny_model.encode(list(b))
    assert torch.allclose(cond[1], alone[0], atol=2e-2)  # right-padding leaves each sample's conditioning alone


def test_length_limit_of_the_tiny_model(pi, tiny_model, kosmos_tokenizer):
    from kosmos_g_core.prompt import check_lengths

    limit = tiny_model.config.max_prompt_tokens  # the rule the Encode node applies
    assert limit == 510  # AlignerNet's 512 positions minus the two it never uses
    seven = pi.build_prompts("<i>" * 7, [slot(pi, 1, torch.rand(7, 32, 32, 3))])
    check_lengths(seven, kosmos_tokenizer, limit)
    tiny_model.encode(list(seven))
    ten = pi.build_prompts(" ".join(["<i>"] * 10), [slot(pi, 1, torch.rand(10, 32, 32, 3))])
    with pytest.raises(pi.PromptError, match="reads at most 510"):
        check_lengths(ten, kosmos_tokenizer, limit)
