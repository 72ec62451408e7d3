"""Shapes, dtypes, parameter counts and the batching invariants of the core model (tiny preset, random weights)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from PIL import Image

from kosmos_g_core.config import KosmosGConfig, detect_config
from kosmos_g_core.mllm import sinusoidal_positions
from kosmos_g_core.model import KosmosG
from kosmos_g_core.prompt import InterleavedPrompt, PromptError, check_lengths, negative_prompt, prompt_tokens


@pytest.fixture(scope="module")
def tiny_model(kosmos_tokenizer):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny()).eval()
    model.tokenizer = kosmos_tokenizer
    return model


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(40 + 3 * i, 33, 3, generator=g) * 255).byte().numpy()) for i in range(n)]


def _n_params(model: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_official_parameter_counts_match_the_reference():
    # exact counts derived from the official shapes (the module tree of `kosmos-g/unilm/models/kosmosg.py:167-194`).
    with torch.device("meta"):
        model = KosmosG(KosmosGConfig.official().with_decoder())
    assert _n_params(model, "gpt_model.") == 1_340_180_480
    assert _n_params(model, "img_model.") == 303_179_776
    assert _n_params(model, "img_connector.") == 19_015_680
    m_params = sum(_n_params(model, f"aligner.{p}") for p in ("encoder_proj.", "encoder_query", "encoder."))
    assert m_params == 225_461_760
    assert _n_params(model, "aligner.") - m_params == 250_569_728  # AlignerNet N
    assert _n_params(model) - 250_569_728 == 1_887_837_696


def test_official_key_names_and_config_detection():
    with torch.device("meta"):
        model = KosmosG(KosmosGConfig.official())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["gpt_model.decoder.embed_tokens.weight"] == (64007, 2048)
    assert shapes["gpt_model.decoder.layers.23.self_attn.inner_attn_ln.weight"] == (2048,)
    assert shapes["gpt_model.decoder.layers.0.ffn.ffn_layernorm.weight"] == (8192,)
    assert shapes["img_model.visual.transformer.resblocks.23.ts_attn.q_proj.bias"] == (1024,)
    assert shapes["img_model.visual.conv1.weight"] == (1024, 3, 14, 14)
    assert shapes["img_connector.x_attn.k_proj.weight"] == (2048, 2048)
    assert shapes["aligner.encoder_proj.embed_tokens.weight"] == (768, 2048)
    assert shapes["aligner.encoder_proj.embed_positions.weight"] == (32768, 768)
    assert shapes["aligner.encoder.layers.11.encoder_attn_layer_norm.weight"] == (768,)
    assert "aligner.encoder.layers.0.encoder_attn.inner_attn_ln.weight" not in shapes  # no Sub-LN on cross-attn
    assert "gpt_model.decoder.output_projection.weight" not in shapes  # tied: not a separate tensor
    assert detect_config(shapes) == KosmosGConfig.official()
    tiny = KosmosGConfig.tiny()
    with torch.device("meta"):
        tiny_shapes = {k: v.shape for k, v in KosmosG(tiny.with_decoder()).state_dict().items()}
    assert detect_config(tiny_shapes) == tiny.with_decoder()
    assert KosmosGConfig.from_dict(tiny.to_dict()) == tiny


def test_sinusoidal_positions_follow_fairseq():
    tokens = torch.tensor([[0, 5, 6, 1, 1]])
    pe = sinusoidal_positions(tokens, 8, pad_id=1)
    half, inv = 4, [math.exp(-math.log(10000.0) * i / 3) for i in range(4)]
    for t, p in enumerate([2, 3, 4]):
        expected = [math.sin(p * w) for w in inv] + [math.cos(p * w) for w in inv]
        assert torch.allclose(pe[0, t], torch.tensor(expected), atol=1e-6)
    assert pe[0, 3:].abs().sum() == 0  # pads get the zero row
    assert pe.shape == (1, 5, 2 * half)


def test_component_shapes_and_dtypes(tiny_model):
    cfg = tiny_model.config
    pixels = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    feats = tiny_model.vision(pixels)
    assert feats.shape == (3, cfg.vision.num_positions, cfg.vision.width)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3, cfg.vision.num_positions), atol=1e-5)
    embeds = tiny_model.encode_images(pixels)
    assert embeds.shape == (3, 64, cfg.mllm.dim)
    batch = tiny_model.collate([InterleavedPrompt.from_text("<i> wearing <i>", _images(2))])
    hidden, logits = tiny_model.mllm_forward(batch.tokens, tiny_model.encode_images(batch.pixels), batch.image_mask,
                                             return_logits=True)
    assert hidden.shape == (1, 134, cfg.mllm.dim) and logits.shape == (1, 134, 64007)
    out = tiny_model.encode(InterleavedPrompt.from_text("<i> wearing <i>", _images(2)))
    assert out.cond.shape == (1, 77, 768) and out.uncond.shape == (1, 77, 768)
    assert out.cond.dtype == torch.float32 and torch.isfinite(out.cond).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_encodes(kosmos_tokenizer, dtype):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny(), dtype=dtype).eval()
    model.tokenizer = kosmos_tokenizer
    out = model.encode(InterleavedPrompt.from_text("a <i> on a beach", _images(1)))
    assert out.cond.dtype == dtype and out.cond.shape == (1, 77, 768) and torch.isfinite(out.cond).all()


def test_image_features_are_scaled_with_the_token_embeddings(tiny_model):
    # The official model writes image features into the slots before multiplying by sqrt(dim).
    mllm = tiny_model.mllm
    tokens = torch.tensor([[0] + [64003] * 65 + [64004]])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 2:66] = True
    feats = torch.randn(1, 64, mllm.config.dim)
    x = mllm.embed(tokens, feats, mask)
    pe = sinusoidal_positions(tokens, mllm.config.dim, 1)
    assert torch.allclose(x[0, 2:66], feats[0] * math.sqrt(mllm.config.dim) + pe[0, 2:66], atol=1e-4)
    assert torch.allclose(x[0, 1], mllm.embed_tokens.weight[64003] * math.sqrt(mllm.config.dim) + pe[0, 1], atol=1e-4)


def test_padding_a_batch_does_not_change_a_sample(tiny_model):
    short = InterleavedPrompt.from_text("a photo of <i>", _images(1, seed=1))
    long = InterleavedPrompt.from_text("<i> wearing <i> in the snow, highly detailed", _images(2, seed=2))
    alone = tiny_model.encode(short).cond
    batched = tiny_model.encode([short, long]).cond
    assert batched.shape == (2, 77, 768)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    assert torch.allclose(batched[1], tiny_model.encode(long).cond[0], atol=1e-5)


def test_unconditional_embedding_is_the_null_prompt(tiny_model):
    out = tiny_model.encode(["a dog", "a cat"])
    null = tiny_model.condition(tiny_model.collate([""]))  # tokens [<s>]
    assert tiny_model.collate([""]).tokens.tolist() == [[0]]
    assert torch.allclose(out.uncond, null.expand(2, -1, -1), atol=1e-6)
    neg = tiny_model.encode("a dog", negative="blurry").uncond
    assert not torch.allclose(neg, out.uncond[:1])


def test_the_empty_negative_is_computed_once_until_the_weights_change(kosmos_tokenizer):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny()).eval()
    model.tokenizer = kosmos_tokenizer
    calls = []
    model.aligner.register_forward_hook(lambda *_: calls.append(1))
    first = model.encode("a dog").uncond
    assert len(calls) == 2  # the prompt and the null prompt
    model.encode(["a cat", "a cow"])
    assert len(calls) == 3  # only the prompts: the null embedding was kept
    with torch.no_grad():
        model.aligner.encoder_query.add_(1.0)  # an in-place weight change (an optimiser step, a weight patch)
    moved = model.encode("a dog").uncond
    assert len(calls) == 5 and not torch.allclose(moved, first)
    torch.testing.assert_close(moved, model.condition(model.collate([""])), rtol=0, atol=0)  # (one more call)
    model.encode("a dog", negative="blurry")
    assert len(calls) == 8  # a negative text is computed each time
    model.to(torch.bfloat16)
    model.encode("a dog")
    assert len(calls) == 10  # another dtype: computed again
    with torch.enable_grad():
        model.train()
        model.null_condition().sum().backward()  # training (stage 3) never reads the cache: its gradient flows
    assert model.aligner.encoder_query.grad is not None


def test_a_literal_placeholder_in_the_negative_is_text(tiny_model, kosmos_tokenizer):
    """The official negative is [<s>] + tokens(text): "<i>" there is three characters, not an image slot."""
    batch = tiny_model.collate([negative_prompt("no <i> here")])
    assert batch.tokens[0].tolist() == [0, *kosmos_tokenizer.encode("no <i> here")]
    assert not batch.image_mask.any()
    assert torch.equal(tiny_model.encode("a dog", negative="no <i> here").uncond[0],
                       tiny_model.condition(batch)[0])


def _text_of_length(tokenizer, length: int) -> str:
    """A text prompt taking exactly `length` positions (<s> included)."""
    text = " ".join(["dog"] * (length - 1))
    assert len(prompt_tokens(text, tokenizer)[0]) == length
    return text


def test_prompt_length_limit_is_the_config_s_and_holds_through_the_model(kosmos_tokenizer):
    """AlignerNet reads max_positions - 2 tokens (rows 0-1 of its position table are never used), so with a 512-row
    table the limit is 510, not 512: a prompt at the limit encodes, one past it is refused by the length check."""
    config = dataclasses.replace(KosmosGConfig.tiny(), mllm=dataclasses.replace(KosmosGConfig.tiny().mllm,
                                                                                  max_positions=600))
    assert config.max_prompt_tokens == config.aligner.max_tokens == 510
    assert dataclasses.replace(config, mllm=dataclasses.replace(config.mllm, max_positions=300)).max_prompt_tokens \
        == 300
    assert config.without_aligner().max_prompt_tokens == 600
    torch.manual_seed(0)
    model = KosmosG(config).eval()
    model.tokenizer = kosmos_tokenizer
    at_limit, over = _text_of_length(kosmos_tokenizer, 510), _text_of_length(kosmos_tokenizer, 511)
    check_lengths([at_limit], kosmos_tokenizer, config.max_prompt_tokens)
    assert model.encode(at_limit).cond.shape == (1, 77, 768)
    message = "the prompt is 511 tokens long (0 images x 66 positions + text) but this KOSMOS-G model reads at most 510"
    with pytest.raises(PromptError, match=re.escape(message)):
        check_lengths([over], kosmos_tokenizer, config.max_prompt_tokens)
    with pytest.raises(PromptError, match="prompt 2 of the batch of 2 is 511 tokens long"):
        model.encode(["a dog", over])
    with pytest.raises(PromptError, match="the negative text is 511 tokens long"):
        check_lengths([negative_prompt(over)], kosmos_tokenizer, config.max_prompt_tokens, what="negative text")


def test_mllm_only_model_refuses_to_condition(kosmos_tokenizer):
    model = KosmosG(KosmosGConfig.tiny().without_aligner()).eval()
    model.tokenizer = kosmos_tokenizer
    with pytest.raises(RuntimeError, match="no AlignerNet"):
        model.encode("a dog")


def test_aligner_decoder_reconstructs_mllm_width(tiny_model):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny().with_decoder())
    hidden = torch.randn(2, 9, model.config.mllm.dim)
    z = model.aligner(hidden, torch.zeros(2, 9, dtype=torch.bool))
    assert model.aligner.reconstruct(z, 9).shape == (2, 9, model.config.mllm.dim)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = KosmosGConfig.tiny()
    cfg = dataclasses.replace(cfg, mllm=dataclasses.replace(cfg.mllm, dropout=0.0, attention_dropout=0.0))
    model = KosmosG(cfg).train()  # training mode, without dropout, so both runs are deterministic
    tokens = torch.tensor([[0, 10, 1133, 4569, 12888]])

    def grads():
        model.zero_grad()
        model.align(model.mllm_forward(tokens), tokens).square().mean().backward()
        return model.mllm.layers[0].ffn.fc1.weight.grad.clone()

    plain = grads()
    model.set_gradient_checkpointing(True)
    assert model.mllm.layers.gradient_checkpointing
    assert torch.allclose(grads(), plain, atol=1e-6)


class _CastOps:
    """A minimal stand-in for ComfyUI's manual_cast layers: weights cast to the input's dtype at each call."""

    class Linear(torch.nn.Linear):
        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    class LayerNorm(torch.nn.LayerNorm):
        def forward(self, x):
            return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype),
                                                  self.bias.to(x.dtype), self.eps)

    class Conv2d(torch.nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, self.weight.to(x.dtype), None)

    Embedding = torch.nn.Embedding


def test_half_weights_can_compute_in_fp32(kosmos_tokenizer):
    torch.manual_seed(0)
    reference = KosmosG(KosmosGConfig.tiny()).eval()
    half = KosmosG(KosmosGConfig.tiny(), dtype=torch.bfloat16, ops=_CastOps).eval()
    half.load_state_dict(reference.state_dict())
    reference.load_state_dict(half.state_dict())  # both hold the same bf16-rounded values
    for m in (reference, half):
        m.tokenizer = kosmos_tokenizer
    half.compute_dtype = torch.float32
    prompt = InterleavedPrompt.from_text("<i> on a beach", _images(1))
    out = half.encode(prompt).cond
    assert out.dtype == torch.float32 and {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert torch.allclose(out, reference.encode(prompt).cond, atol=1e-4)


def test_bf16_gelu_shortcut_is_bit_identical_to_the_fp32_upcast():
    # layers.FeedForward skips the explicit fp32 round trip for bf16 only; this pins why that is safe.
    x = (torch.randn(2048, 256, generator=torch.Generator().manual_seed(0)) * 4).to(torch.bfloat16)
    assert torch.equal(torch.nn.functional.gelu(x), torch.nn.functional.gelu(x.float()).to(torch.bfloat16))
