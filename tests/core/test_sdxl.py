"""The SDXL variant of the core: AlignerNet with SDXL's output heads (a (B, 77, 2048) context and a (B, 1280)
pooled vector), told from the tensor shapes, round-tripping through the pack's file, and the API the trainer uses
(`align` / `condition` / `null_condition` give the context, `pooled(context)` its pooled vector)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from kosmos_g_core.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint, write_safetensors
from kosmos_g_core.config import (
    PRESETS,
    AlignerConfig,
    ConnectorConfig,
    KosmosGConfig,
    MLLMConfig,
    VisionConfig,
    detect_config,
)
from kosmos_g_core.model import KosmosG
from kosmos_g_core.prompt import InterleavedPrompt

# What an SD1.5 file's stored AlignerNet config holds: the fields of format 2, nothing new.
SD15_ALIGNER_FIELDS = {"dim", "heads", "ffn_dim", "encoder_layers", "decoder_layers", "num_queries", "max_positions",
                       "with_decoder"}


@pytest.fixture(scope="module")
def tiny_sdxl(kosmos_tokenizer):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny_sdxl()).eval()
    model.tokenizer = kosmos_tokenizer
    return model


def _prompt(seed: int = 0) -> InterleavedPrompt:
    g = torch.Generator().manual_seed(seed)
    img = Image.fromarray((torch.rand(50, 40, 3, generator=g) * 255).byte().numpy())
    return InterleavedPrompt.from_text("<i> wearing <i>", [img, img.rotate(90)])


def _shapes(config: KosmosGConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in KosmosG(config).state_dict().items()}


def test_context_and_pooled_shapes(tiny_sdxl):
    out = tiny_sdxl.encode(_prompt(), negative="blurry")
    assert out.cond.shape == out.uncond.shape == (1, 77, 2048)
    with torch.inference_mode():
        pooled = tiny_sdxl.pooled(out.cond)
        null_pooled = tiny_sdxl.pooled(tiny_sdxl.null_condition())
    assert pooled.shape == null_pooled.shape == (1, 1280)
    assert torch.isfinite(pooled).all() and not torch.allclose(pooled, null_pooled)
    assert tiny_sdxl.config.condition_shape == (77, 2048) and tiny_sdxl.config.pooled_dim == 1280


def test_padding_a_batch_changes_neither_context_nor_pooled(tiny_sdxl):
    short, long = "a photo of a dog", _prompt(1)
    with torch.inference_mode():
        alone = tiny_sdxl.encode(short).cond
        batched = tiny_sdxl.encode([short, long]).cond
        assert torch.allclose(batched[0], alone[0], atol=1e-5)
        assert torch.allclose(tiny_sdxl.pooled(batched)[0], tiny_sdxl.pooled(alone)[0], atol=1e-5)


def test_an_sd15_model_makes_no_pooled_vector(kosmos_tokenizer):
    model = KosmosG(KosmosGConfig.tiny()).eval()
    model.tokenizer = kosmos_tokenizer
    assert model.config.pooled_dim is None and not model.config.aligner.is_sdxl
    with pytest.raises(RuntimeError, match="SD1.5 conditioning, which has no pooled vector"):
        model.pooled(model.encode("a dog").cond)


def test_official_size_sdxl_variant():
    """The official AlignerNet (M 225,461,760 parameters) plus the SDXL heads, and N reading the 2048-wide context."""
    with torch.device("meta"):
        model = KosmosG(KosmosGConfig.sdxl().with_decoder())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    heads = {k: v for k, v in shapes.items() if k.startswith(("aligner.context_proj.", "aligner.pooled_head."))}
    head_params = sum(torch.Size(s).numel() for s in heads.values())
    # context_proj 768x2048 + 2048; pooled head: query 768, q/out 768x768 + 768, k/v 768x2048 + 768, LN 2x768,
    # proj 1280x768 (no bias)
    assert head_params == (768 * 2048 + 2048) + 768 + 2 * (768 * 768 + 768) + 2 * (768 * 2048 + 768) + 2 * 768 \
        + 1280 * 768
    m_params = sum(p.numel() for n, p in model.named_parameters()
                   if n.startswith(("aligner.encoder_proj.", "aligner.encoder_query", "aligner.encoder.")))
    assert m_params == 225_461_760  # the official M, unchanged
    assert shapes["aligner.context_proj.weight"] == (2048, 768)
    assert shapes["aligner.pooled_head.proj.weight"] == (1280, 768)
    assert "aligner.pooled_head.proj.bias" not in shapes  # as bigG's text_projection
    assert shapes["aligner.decoder.layers.0.encoder_attn.k_proj.weight"] == (768, 2048)
    assert detect_config(shapes) == KosmosGConfig.sdxl().with_decoder()
    with torch.device("meta"):
        without_n = KosmosG(KosmosGConfig.sdxl())
    assert sum(p.numel() for p in without_n.parameters()) == 1_887_837_696 + head_params == 1_894_726_400
    assert KosmosGConfig.sdxl().condition_shape == (77, 2048)
    assert PRESETS["sdxl"] == KosmosGConfig.sdxl() and PRESETS["tiny_sdxl"] == KosmosGConfig.tiny_sdxl()


def test_the_variant_is_read_from_shapes():
    assert detect_config(_shapes(KosmosGConfig.tiny_sdxl())) == KosmosGConfig.tiny_sdxl()
    assert detect_config(_shapes(KosmosGConfig.tiny_sdxl().with_decoder())) == KosmosGConfig.tiny_sdxl().with_decoder()
    sd15 = detect_config(_shapes(KosmosGConfig.tiny()))
    assert sd15 == KosmosGConfig.tiny() and sd15.aligner.context_dim is None and sd15.aligner.pooled_dim is None
    half = {k: v for k, v in _shapes(KosmosGConfig.tiny_sdxl()).items() if not k.startswith("aligner.pooled_head.")}
    with pytest.raises(ValueError, match="context_dim=2048 and pooled_dim=None: the SDXL output heads"):
        detect_config(half)


def test_the_heads_come_together():
    with pytest.raises(ValueError, match="both are set or neither is"):
        AlignerConfig(context_dim=2048)
    with pytest.raises(ValueError, match="pooled_dim must be a positive width"):
        AlignerConfig(context_dim=2048, pooled_dim=0)


def test_sdxl_file_round_trips(tiny_sdxl, tmp_path):
    # The file name says SD1.5; the tensors say SDXL, and they win.
    path = tmp_path / "kosmos-g-sd15.safetensors"
    assert save_checkpoint(path, tiny_sdxl) == KosmosGConfig.tiny_sdxl()
    with safe_open(path, framework="pt") as f:
        stored = json.loads(f.metadata()["config"])["aligner"]
    assert stored["context_dim"] == 2048 and stored["pooled_dim"] == 1280
    assert read_header(path)[0] == KosmosGConfig.tiny_sdxl()
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_sdxl.config
    for (k, a), (k2, b) in zip(tiny_sdxl.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    prompt = _prompt()
    with torch.inference_mode():
        expected, got = tiny_sdxl.encode(prompt, negative="blurry"), loaded.encode(prompt, negative="blurry")
        assert torch.equal(got.cond, expected.cond) and torch.equal(got.uncond, expected.uncond)
        assert torch.equal(loaded.pooled(got.cond), tiny_sdxl.pooled(expected.cond))


def test_every_hyper_parameter_of_an_sdxl_file_round_trips(kosmos_tokenizer, tmp_path):
    """Head widths other than 64 everywhere (the pooled head shares AlignerNet's heads), other widths for the heads,
    every unshaped field changed, and N included: all of it comes back from the file."""
    config = KosmosGConfig(
        vision=VisionConfig(image_size=28, patch_size=14, width=64, layers=2, heads=4),
        mllm=MLLMConfig(dim=128, layers=2, heads=4, ffn_dim=256, max_positions=1024, dropout=0.05,
                        attention_dropout=0.02),
        connector=ConnectorConfig(num_queries=64, heads=8, attention_dropout=0.03),
        aligner=AlignerConfig(dim=96, heads=4, ffn_dim=160, encoder_layers=2, decoder_layers=1, max_positions=300,
                              with_decoder=True, context_dim=192, pooled_dim=80),
    )
    torch.manual_seed(0)
    model = KosmosG(config).eval()
    model.tokenizer = kosmos_tokenizer
    path = tmp_path / "unusual_sdxl.safetensors"
    assert save_checkpoint(path, model) == config
    loaded = load_checkpoint(path)
    assert loaded.config == config
    with torch.inference_mode():
        expected, got = model.encode(_prompt()), loaded.encode(_prompt())
        assert got.cond.shape == (1, 77, 192)
        assert torch.equal(got.cond, expected.cond) and torch.equal(loaded.pooled(got.cond), model.pooled(expected.cond))
        z = loaded.align(torch.randn(1, 7, 128), torch.zeros(1, 7, dtype=torch.long))
        assert loaded.aligner.reconstruct(z, 7).shape == (1, 7, 128)
    # The pooled head's attention uses the stored 4 heads: with one head per 64 channels it pools differently.
    wrong = KosmosG(dataclasses.replace(config, aligner=dataclasses.replace(config.aligner, heads=1))).eval()
    wrong.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert (wrong.pooled(expected.cond) - model.pooled(expected.cond)).abs().max() > 1e-3


def test_an_sd15_file_stores_what_it_stored_before(kosmos_tokenizer, tmp_path):
    """Nothing about SD1.5 files changes: their config metadata has no SDXL fields (so older pack versions read it)."""
    path = tmp_path / "sd15.safetensors"
    model = KosmosG(KosmosGConfig.tiny())
    save_checkpoint(path, model.state_dict(), kosmos_tokenizer, KosmosGConfig.tiny())
    with safe_open(path, framework="pt") as f:
        stored = json.loads(f.metadata()["config"])
        keys = set(f.keys())
    assert set(stored["aligner"]) == SD15_ALIGNER_FIELDS
    assert not any(k.startswith(("aligner.context_proj", "aligner.pooled_head")) for k in keys)
    assert KosmosGConfig.from_dict(stored) == KosmosGConfig.tiny()


def test_a_file_whose_config_and_heads_disagree_is_refused(tiny_sdxl, tmp_path):
    """An SDXL file whose stored config was edited to say SD1.5 (or the other way round) is named as damaged."""
    good = tmp_path / "sdxl.safetensors"
    save_checkpoint(good, tiny_sdxl)
    with safe_open(good, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    del config["aligner"]["context_dim"], config["aligner"]["pooled_dim"]
    bad = tmp_path / "edited.safetensors"
    write_safetensors(bad, tensors, {**meta, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=r"edited\.safetensors: the config stored .*aligner\.context_dim is None"):
        load_checkpoint(bad)
    half = tmp_path / "half_heads.safetensors"
    write_safetensors(half, {k: v for k, v in tensors.items() if not k.startswith("aligner.pooled_head.")}, meta)
    with pytest.raises(CheckpointError, match=r"half_heads\.safetensors: AlignerNet has context_dim=2048 and "
                                              r"pooled_dim=None"):
        load_checkpoint(half)


def test_the_trainer_s_api_trains_every_sdxl_part(kosmos_tokenizer):
    """Stage 2 for SDXL: MSE of the context against the two text encoders' penultimate states, MSE of the pooled
    vector against bigG's, and N's reconstruction; every AlignerNet tensor (heads, M and N) gets a gradient."""
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny_sdxl().with_decoder())
    tokens = torch.tensor([[0, 10, 1133, 4569, 12888], [0, 10, 1133, 1, 1]])
    with torch.no_grad():
        hidden = model.mllm_forward(tokens)  # (2, 5, 128), the frozen MLLM
    context = model.align(hidden, tokens)  # (2, 77, 2048)
    pooled = model.pooled(context)  # (2, 1280)
    rec = model.aligner.reconstruct(context, tokens.shape[1])  # (2, 5, 128)
    loss = (context - torch.randn_like(context)).square().mean() + (pooled - torch.randn_like(pooled)).square().mean() \
        + (rec - hidden).square().mean()
    loss.backward()
    no_grad = [n for n, p in model.aligner.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad


def test_a_half_precision_sdxl_model_encodes(tiny_sdxl):
    half = KosmosG(KosmosGConfig.tiny_sdxl(), dtype=torch.bfloat16).eval()
    half.load_state_dict(tiny_sdxl.state_dict())
    half.tokenizer = tiny_sdxl.tokenizer
    with torch.inference_mode():
        out = half.encode("a dog")
        pooled = half.pooled(out.cond)
    assert out.cond.dtype == pooled.dtype == torch.bfloat16 and pooled.shape == (1, 1280)
