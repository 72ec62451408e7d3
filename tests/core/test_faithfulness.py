"""Faithfulness of the core's forward pass to the official KOSMOS-G code (microsoft/unilm `kosmos-g/`, commit 421c251).

Two kinds of checks:

* small hand-computable cases that pin one rule each (positions, pad zeroing, the connector's key set, Sub-LN
  placement, GELU flavour, attention scaling, the ViT's output normalisation, the prompt layout, preprocessing);
* an independent re-statement of the official computation, written the way torchscale/fairseq lay it out
  (sequence-first tensors, `q *= head_dim**-0.5`, `bmm`, additive `-inf` causal mask, key-padding `masked_fill`,
  softmax in fp32), run in float64 against the pack's modules with the same weights.

The reference functions below follow the official *semantics* (file:line in each docstring); they share no code
with the pack (no SDPA, no pack helpers), so a change of semantics in the pack shows up as a mismatch.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kosmos_g_core.aligner import AlignerNet
from kosmos_g_core.config import AlignerConfig, KosmosGConfig, MLLMConfig
from kosmos_g_core.connector import Connector
from kosmos_g_core.image import CLIP_MEAN, CLIP_STD, normalize, resize_and_crop
from kosmos_g_core.layers import Attention, FeedForward, TransformerLayer
from kosmos_g_core.mllm import MLLM, sinusoidal_positions
from kosmos_g_core.model import KosmosG
from kosmos_g_core.prompt import InterleavedPrompt, PromptBatch, collate, prompt_tokens
from kosmos_g_core.vision import MLP, VisionTransformer

D64 = torch.float64
BOS, PAD, BOI, EOI = 0, 1, 64003, 64004
NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _randomise_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """LayerNorms start at weight 1 / bias 0, which hides misplaced norms; give them distinct random affines."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g, dtype=D64).to(m.weight.dtype))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g, dtype=D64).to(m.bias.dtype))


@pytest.fixture(scope="module")
def tiny64() -> KosmosG:
    """Tiny KOSMOS-G (with AlignerNet N) in float64, random weights and random LayerNorm affines. Shared: tests that
    change weights work on a deep copy."""
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny().with_decoder(), dtype=D64).eval()
    _randomise_norms(model)
    return model


def _ln(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, 1e-5)  # apex FusedLayerNorm default eps


def _lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------------------------------
# Reference: the official computation, sequence-first (T, B, E)
# ---------------------------------------------------------------------------------------------------------------
def ref_attention(query, key, attn: Attention, *, causal=False, key_padding_mask=None):
    """torchscale MultiheadAttention.forward, non-flash path (component/multihead_attention.py:117-199):
    q/k/v projections, heads as (B*H, T, hd), q *= hd**-0.5, bmm, additive triu(-inf) mask, key padding by
    masked_fill(-inf), softmax in fp32, bmm, heads concatenated, inner_attn_ln (self-attention only), out_proj.
    The flash path (xformers LowerTriangularMask, taken when a causal mask is given) computes the same causal softmax."""
    tgt, bsz, dim = query.shape
    heads = attn.heads
    hd = dim // heads
    q = _lin(query, attn.q_proj).reshape(tgt, bsz * heads, hd).transpose(0, 1)
    k = _lin(key, attn.k_proj).reshape(-1, bsz * heads, hd).transpose(0, 1)
    v = _lin(key, attn.v_proj).reshape(-1, bsz * heads, hd).transpose(0, 1)
    src = k.shape[1]
    q = q * hd**-0.5
    w = torch.bmm(q, k.transpose(1, 2))  # (B*H, tgt, src)
    if causal:
        w = w + torch.triu(torch.full((tgt, src), NEG_INF, dtype=w.dtype), 1)[None]
    if key_padding_mask is not None:
        w = w.view(bsz, heads, tgt, src).masked_fill(key_padding_mask[:, None, None, :], NEG_INF)
        w = w.view(bsz * heads, tgt, src)
    p = F.softmax(w, dim=-1, dtype=torch.float32 if w.dtype != D64 else D64).type_as(w)
    out = torch.bmm(p, v).transpose(0, 1).reshape(tgt, bsz, dim)
    if attn.inner_attn_ln is not None:
        out = _ln(out, attn.inner_attn_ln)
    return _lin(out, attn.out_proj)


def ref_ffn(x, ffn: FeedForward):
    """torchscale FeedForwardNetwork.forward (feedforward_network.py:120-131): fc1, exact GELU in fp32,
    (activation dropout), ffn_layernorm, fc2."""
    h = _lin(x, ffn.fc1)
    h = F.gelu(h.float()).type_as(h)  # `.float()` is fp32 even for a float64 model, as in the official code
    return _lin(_ln(h, ffn.ffn_layernorm), ffn.fc2)


def ref_layer(x, layer: TransformerLayer, *, causal=False, self_pad=None, memory=None, memory_pad=None):
    """torchscale DecoderLayer/EncoderLayer.forward with normalize_before (decoder.py:145-211, encoder.py:112-154)."""
    x = x + ref_attention(_ln(x, layer.self_attn_layer_norm), _ln(x, layer.self_attn_layer_norm), layer.self_attn,
                          causal=causal, key_padding_mask=self_pad)
    if layer.encoder_attn is not None and memory is not None:
        x = x + ref_attention(_ln(x, layer.encoder_attn_layer_norm), memory, layer.encoder_attn,
                              key_padding_mask=memory_pad)
    return x + ref_ffn(_ln(x, layer.final_layer_norm), layer.ffn)


def fairseq_sinusoid_table(num: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq SinusoidalPositionalEmbedding.get_embedding (sinusoidal_positional_embedding.py:36-58), fp32."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    inv = torch.exp(torch.arange(half, dtype=torch.float) * -step)
    table = torch.arange(num, dtype=torch.float).unsqueeze(1) * inv.unsqueeze(0)
    table = torch.cat([torch.sin(table), torch.cos(table)], dim=1).view(num, -1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num, 1)], dim=1)
    table[padding_idx, :] = 0
    return table


def fairseq_positions(tokens: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """fairseq utils.make_positions (utils.py:256-266)."""
    mask = tokens.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def ref_mllm(tokens, mllm: MLLM, img_features=None, img_mask=None):
    """LMDecoder.forward_embedding + forward (gpt.py:224-358): image features written into the token embedding
    at the mask, then * sqrt(dim), + sinusoidal positions, causal layers WITHOUT a padding mask, final LN."""
    dim = mllm.config.dim
    emb = mllm.embed_tokens.weight[tokens].clone()
    if img_features is not None:
        emb[img_mask] = img_features
    table = fairseq_sinusoid_table(tokens.shape[1] + PAD + 1, dim, PAD).to(emb.dtype)
    x = math.sqrt(dim) * emb + table[fairseq_positions(tokens, PAD)]
    x = x.transpose(0, 1)
    for layer in mllm.layers:
        x = ref_layer(x, layer, causal=True)
    return _ln(x, mllm.layer_norm).transpose(0, 1)


def ref_vision(pixels, vit: VisionTransformer):
    """VisualTransformer4Seq2Seq.forward + ClipVisualOnly.forward (vl/clip.py:45-64, 123-126), open_clip blocks
    (open_clip model.py:212-236): class token, positions, ln_pre, pre-LN blocks (ts_attn without mask, QuickGELU),
    ln_post on every token, F.normalize, no projection. Returns (N, T, C)."""
    x = F.conv2d(pixels, vit.conv1.weight, stride=vit.config.patch_size)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = vit.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + vit.positional_embedding
    x = _ln(x, vit.ln_pre).permute(1, 0, 2)
    for block in vit.transformer.resblocks:
        h = _ln(x, block.ln_1)
        x = x + ref_attention(h, h, block.ts_attn)
        h = _lin(_ln(x, block.ln_2), block.mlp.c_fc)
        x = x + _lin(h * torch.sigmoid(1.702 * h), block.mlp.c_proj)
    x = _ln(x, vit.ln_post)
    return F.normalize(x, dim=-1).transpose(0, 1)


def ref_connector(features, conn: Connector):
    """XConnector.forward (connector.py:56-83): dense, then latent queries attend over cat([x, latent_query])
    along the sequence; no residual. fairseq MHA (F.multi_head_attention_forward) = plain scaled attention.
    Input (N, T, C) -> (N*Q, D) as the official flattens it."""
    n, t, _ = features.shape
    x = _lin(features.reshape(-1, features.shape[-1]), conn.dense)
    x = x.view(-1, t, x.shape[-1]).transpose(0, 1)  # (T, N, D)
    latent = conn.latent_query.unsqueeze(1).expand(-1, n, -1)
    kv = torch.cat([x, latent])
    out = ref_attention(latent, kv, conn.x_attn)
    return out.transpose(0, 1).reshape(-1, out.shape[-1])


def ref_aligner_m(condition, pad, aligner: AlignerNet):
    """Aligner_encoder.forward (aligner.py:90-100) on torchscale Encoder (encoder.py:300-384) and Decoder
    (decoder.py:408-507): Linear + learned positions P[2..T+1] (embed_scale 1), x * (1 - pad), encoder layers with key
    padding, final LN; 77 queries (no positions) through non-causal decoder layers, cross-attention masked by pad."""
    enc = aligner.encoder_proj
    t = condition.shape[1]
    x = _lin(condition, enc.embed_tokens) + enc.embed_positions.weight[torch.arange(2, t + 2)][None]
    x = (x * (1 - pad.unsqueeze(-1).type_as(x))).transpose(0, 1)
    for layer in enc.layers:
        x = ref_layer(x, layer, self_pad=pad)
    memory = _ln(x, enc.layer_norm)
    q = aligner.encoder_query.unsqueeze(1).expand(-1, condition.shape[0], -1)
    for layer in aligner.encoder.layers:
        q = ref_layer(q, layer, memory=memory, memory_pad=pad)
    return _ln(q, aligner.encoder.layer_norm).transpose(0, 1)


def ref_aligner_n(z, length, aligner: AlignerNet):
    """Aligner.forward's reconstruction (aligner.py:57-66): decoder_query[:T] cross-attending z without a mask, then
    decoder_proj (positions P[2..], an all-False pad mask: no zeroing), final LN, output_projection."""
    q = aligner.decoder_query[:length].unsqueeze(1).expand(-1, z.shape[0], -1)
    memory = z.transpose(0, 1)
    for layer in aligner.decoder.layers:
        q = ref_layer(q, layer, memory=memory)
    x = _ln(q, aligner.decoder.layer_norm).transpose(0, 1)
    proj = aligner.decoder_proj
    x = (x + proj.embed_positions.weight[torch.arange(2, length + 2)][None]).transpose(0, 1)
    for layer in proj.layers:
        x = ref_layer(x, layer)
    return _lin(_ln(x, proj.layer_norm), proj.output_projection).transpose(0, 1)


def _prompt_tokens_two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """[<s>] + text + <image>*65 + </image> + text + <image>*65 + </image> + text, right-padded in a batch of 2."""
    row0 = [BOS, 10, 11] + [BOI] * 65 + [EOI] + [12] + [BOI] * 65 + [EOI] + [13, 14]
    mask0 = [False] * 4 + [True] * 64 + [False] + [False] * 2 + [True] * 64 + [False] * 3
    row1 = [BOS, 20] + [BOI] * 65 + [EOI] + [21, 22, 23]
    mask1 = [False] * 3 + [True] * 64 + [False] * 4
    length = len(row0)
    tokens = torch.full((2, length), PAD)
    mask = torch.zeros((2, length), dtype=torch.bool)
    tokens[0], mask[0] = torch.tensor(row0), torch.tensor(mask0)
    tokens[1, : len(row1)], mask[1, : len(mask1)] = torch.tensor(row1), torch.tensor(mask1)
    return tokens, mask


# ---------------------------------------------------------------------------------------------------------------
# Whole components against the official computation (float64)
# ---------------------------------------------------------------------------------------------------------------
def test_vision_tower_equals_official_computation(tiny64):
    model = tiny64
    pixels = torch.randn(3, 3, 28, 28, dtype=D64)
    ours = model.vision(pixels)
    assert ours.shape == (3, 5, 64)  # every token (class + 4 patches), width kept: no 1024->768 projection
    torch.testing.assert_close(ours, ref_vision(pixels, model.vision), rtol=0, atol=1e-12)


def test_connector_equals_official_computation(tiny64):
    model = tiny64
    features = F.normalize(torch.randn(3, 5, 64, dtype=D64), dim=-1)
    ours = model.img_connector(features)  # (N, 64, D)
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), ref_connector(features, model.img_connector),
                               rtol=0, atol=1e-12)


def test_mllm_equals_official_computation_with_images_and_right_padding(tiny64):
    model = tiny64
    tokens, mask = _prompt_tokens_two_images()
    feats = torch.randn(3, 64, model.config.mllm.dim, dtype=D64)
    ours = model.mllm(tokens, feats, mask)
    ref = ref_mllm(tokens, model.mllm, feats.reshape(-1, feats.shape[-1]), mask)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_mllm_uses_no_padding_mask_only_causality(tiny64):
    # The official LMDecoder.forward (gpt.py:278) never builds a key-padding mask. A pad in the middle makes the
    # difference visible: the later tokens attend to it (its input is the zero embedding plus the zero position row).
    model = tiny64
    tokens = torch.tensor([[BOS, 10, PAD, 11, 12]])
    ours = model.mllm(tokens)
    torch.testing.assert_close(ours, ref_mllm(tokens, model.mllm), rtol=0, atol=1e-10)
    # Sensitivity: masking the pad as a key would give a different result for the tokens after it.
    x = (math.sqrt(model.config.mllm.dim) * model.mllm.embed_tokens.weight[tokens]
         + fairseq_sinusoid_table(8, model.config.mllm.dim, PAD).to(D64)[fairseq_positions(tokens, PAD)])
    x = x.transpose(0, 1)
    for layer in model.mllm.layers:
        x = ref_layer(x, layer, causal=True, self_pad=tokens.eq(PAD))
    masked = _ln(x, model.mllm.layer_norm).transpose(0, 1)
    assert (masked[0, 3:] - ours[0, 3:]).abs().max() > 1e-6
    torch.testing.assert_close(masked[0, :2], ours[0, :2], rtol=0, atol=1e-10)  # causality: earlier rows unchanged


def test_aligner_m_equals_official_computation_with_padding(tiny64):
    model = tiny64
    hidden = torch.randn(2, 9, model.config.mllm.dim, dtype=D64)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 5:] = True
    ours = model.aligner(hidden, pad)
    torch.testing.assert_close(ours, ref_aligner_m(hidden, pad, model.aligner), rtol=0, atol=1e-10)


def test_aligner_n_equals_official_computation(tiny64):
    model = tiny64
    z = torch.randn(2, 77, 768, dtype=D64)
    ours = model.aligner.reconstruct(z, 11)
    assert ours.shape == (2, 11, model.config.mllm.dim)
    torch.testing.assert_close(ours, ref_aligner_n(z, 11, model.aligner), rtol=0, atol=1e-10)


def test_condition_is_aligner_output_unchanged_end_to_end(tiny64):
    # kosmosg.py encode_condition (339-341) + diffusion.py sample (120-125): the final-LN output of M goes to the U-Net
    # as encoder_hidden_states with no casting, scaling or normalisation in between.
    model = tiny64
    tokens, mask = _prompt_tokens_two_images()
    pixels = torch.randn(3, 3, 28, 28, dtype=torch.float32)
    ours = model.condition(PromptBatch(tokens, mask, pixels))
    assert ours.dtype == D64 and ours.shape == (2, 77, 768)
    feats = ref_connector(ref_vision(pixels.to(D64), model.vision), model.img_connector)
    hidden = ref_mllm(tokens, model.mllm, feats, mask)
    torch.testing.assert_close(ours, ref_aligner_m(hidden, tokens.eq(PAD), model.aligner), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computable rules
# ---------------------------------------------------------------------------------------------------------------
def test_sinusoidal_positions_by_hand_dim4():
    # dim 4: half 2, inv = [1, exp(-ln(10000)/1)] = [1, 1e-4]; row p = [sin p, sin 1e-4 p, cos p, cos 1e-4 p].
    # Positions start at pad+1 = 2 and count only non-pad tokens; pads get the zero row.
    tokens = torch.tensor([[BOS, 7, 8, PAD, PAD], [BOS, PAD, 9, 9, PAD]])
    pe = sinusoidal_positions(tokens, 4, pad_id=PAD).to(D64)
    for b, positions in enumerate([[2, 3, 4, None, None], [2, None, 3, 4, None]]):
        for t, p in enumerate(positions):
            expected = [0.0] * 4 if p is None else [math.sin(p), math.sin(1e-4 * p), math.cos(p), math.cos(1e-4 * p)]
            torch.testing.assert_close(pe[b, t], torch.tensor(expected, dtype=D64), rtol=0, atol=1e-6)


def test_sinusoidal_positions_bit_equal_fairseq_table_fp32_and_fp16():
    tokens = torch.tensor([[BOS] + list(range(4, 300)) + [PAD] * 5, [BOS] + [5] * 100 + [PAD] * 201])
    for dim in (128, 2048, 7):
        table = fairseq_sinusoid_table(tokens.shape[1] + 2, dim, PAD)
        official = table[fairseq_positions(tokens, PAD)]
        ours = sinusoidal_positions(tokens, dim, pad_id=PAD)
        assert torch.equal(ours, official)
        # --memory-efficient-fp16: the official table is cast to fp16 (`weights.to(_float_tensor)`) before lookup.
        assert torch.equal(ours.to(torch.float16), table.to(torch.float16)[fairseq_positions(tokens, PAD)])


def test_fp16_embedding_rounds_like_the_official_model():
    # Official fp16: x = (fp16 embedding) * sqrt(dim) in fp16, then += fp16(table) (gpt.py:266-269).
    torch.manual_seed(0)
    mllm = MLLM(KosmosGConfig.tiny().mllm, dtype=torch.float16).eval()
    tokens, mask = _prompt_tokens_two_images()
    feats = torch.randn(3, 64, mllm.config.dim).half()
    ours = mllm.embed(tokens, feats, mask)
    emb = mllm.embed_tokens.weight[tokens].clone()
    emb[mask] = feats.reshape(-1, mllm.config.dim)
    table = fairseq_sinusoid_table(tokens.shape[1] + 2, mllm.config.dim, PAD).to(torch.float16)
    expected = emb * math.sqrt(mllm.config.dim)
    expected += table[fairseq_positions(tokens, PAD)]
    assert torch.equal(ours, expected)


def test_image_slots_are_replaced_before_the_embedding_scale_by_hand():
    cfg = dataclasses.replace(MLLMConfig(), vocab_size=64007, dim=4, layers=0, heads=1, ffn_dim=8)
    mllm = MLLM(cfg, dtype=D64).eval()
    with torch.no_grad():
        mllm.embed_tokens.weight.zero_()
        mllm.embed_tokens.weight[BOI] = torch.tensor([1.0, 0, 0, 0])
    tokens = torch.tensor([[BOS, BOI, BOI, BOI, EOI]])
    mask = torch.tensor([[False, False, True, True, False]])
    feats = torch.tensor([[[0.0, 2.0, 0, 0], [0.0, 0, 3.0, 0]]], dtype=D64)
    x = mllm.embed(tokens, feats, mask) - sinusoidal_positions(tokens, 4, PAD).to(D64)
    torch.testing.assert_close(x[0, 1], torch.tensor([2.0, 0, 0, 0], dtype=D64))  # first <image> keeps its embedding
    torch.testing.assert_close(x[0, 2], torch.tensor([0, 4.0, 0, 0], dtype=D64))  # 2 * sqrt(4): features scaled too
    torch.testing.assert_close(x[0, 3], torch.tensor([0, 0, 6.0, 0], dtype=D64))


def test_aligner_positions_start_at_two_ignore_pads_and_pads_are_zeroed():
    cfg = AlignerConfig(dim=64, heads=1, ffn_dim=32, encoder_layers=1, decoder_layers=1, max_positions=16)
    aligner = AlignerNet(cfg, mllm_dim=8, dtype=D64).eval()
    with torch.no_grad():
        aligner.encoder_proj.embed_tokens.weight.zero_()
        aligner.encoder_proj.embed_tokens.bias.zero_()
        aligner.encoder_proj.embed_positions.weight.copy_(torch.arange(16, dtype=D64)[:, None].expand(16, 64))
    seen = {}
    aligner.encoder_proj.layers[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].clone()))
    hidden = torch.randn(2, 5, 8, dtype=D64)
    pad = torch.tensor([[False] * 5, [False, False, True, False, True]])  # a pad in the middle, too
    aligner(hidden, pad)
    # Row t reads table row 2 + t (torchscale PositionalEmbedding, not pad-aware: no cumsum), embed_scale 1,
    # then x * (1 - pad) (encoder.py:347).
    expected = torch.tensor([[2.0, 3, 4, 5, 6], [2, 3, 0, 5, 0]], dtype=D64)
    torch.testing.assert_close(seen["x"][..., 0], expected)
    torch.testing.assert_close(seen["x"].std(-1), torch.zeros(2, 5, dtype=D64))


def test_aligner_pads_are_masked_keys_in_both_attentions(tiny64):
    # Pad rows of the MLLM states must not matter at all: zeroed, masked in encoder_proj's self-attention and in the
    # query decoder's cross-attention. The query decoder's self-attention is unmasked and non-causal.
    model = tiny64
    aligner = copy.deepcopy(model.aligner)
    hidden = torch.randn(1, 6, model.config.mllm.dim, dtype=D64)
    pad = torch.tensor([[False, False, False, True, True, True]])
    out = aligner(hidden, pad)
    noisy = hidden.clone()
    noisy[0, 3:] = 100 * torch.randn(3, model.config.mllm.dim, dtype=D64)
    torch.testing.assert_close(aligner(noisy, pad), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(aligner(hidden[:, :3], pad[:, :3]), out, rtol=0, atol=1e-10)
    # Not masked as queries of the query decoder: changing the last query changes the first output row.
    with torch.no_grad():
        aligner.encoder_query[-1] += torch.randn(768, dtype=D64)  # not a constant: LayerNorm would remove it
    assert (aligner(hidden, pad)[0, 0] - out[0, 0]).abs().max() > 1e-6


def test_attention_scaling_by_hand():
    # One head of width 64, identity projections, zero biases: logits = q.k / sqrt(64).
    attn = Attention(64, 1, dtype=D64).eval()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            proj.weight.copy_(torch.eye(64, dtype=D64))
            proj.bias.zero_()
    q = torch.zeros(1, 1, 64, dtype=D64)
    q[0, 0, 0] = 4.0
    keys = torch.zeros(1, 2, 64, dtype=D64)
    keys[0, 0, 0], keys[0, 1, 1] = 4.0, 1.0  # q.k = 16 and 0 -> logits 2 and 0
    out = attn(q, keys)
    w = math.exp(2.0) / (math.exp(2.0) + 1.0)
    expected = w * keys[0, 0] + (1 - w) * keys[0, 1]
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)


def test_connector_keys_are_features_and_latents_with_no_residual_by_hand():
    # With q/k projections zero every key gets the same logit, so each output row is the MEAN of the values over
    # the key set. Identity v/out projections make that mean visible: it must run over the 5 projected tokens AND
    # the 64 latent queries (321 keys at full size), and nothing is added back (no residual).
    conn = Connector(KosmosGConfig.tiny().connector, vision_width=64, dim=128, dtype=D64).eval()
    with torch.no_grad():
        for proj in (conn.x_attn.q_proj, conn.x_attn.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        for proj in (conn.x_attn.v_proj, conn.x_attn.out_proj):
            proj.weight.copy_(torch.eye(128, dtype=D64))
            proj.bias.zero_()
    features = torch.randn(2, 5, 64, dtype=D64)
    out = conn(features)
    projected = features @ conn.dense.weight.T + conn.dense.bias  # (2, 5, 128)
    mean = (projected.sum(1) + conn.latent_query.sum(0)) / (5 + 64)  # (2, 128)
    torch.testing.assert_close(out, mean[:, None].expand(-1, 64, -1), rtol=0, atol=1e-12)
    assert conn.x_attn.inner_attn_ln is None


def test_subln_inner_attn_ln_sits_right_before_out_proj_on_self_attention_only():
    layer = TransformerLayer(64, 1, 32, cross_attention=True, dtype=D64).eval()
    assert layer.self_attn.inner_attn_ln is not None and layer.encoder_attn.inner_attn_ln is None
    b = torch.randn(64, dtype=D64)
    with torch.no_grad():
        layer.self_attn.inner_attn_ln.weight.zero_()
        layer.self_attn.inner_attn_ln.bias.copy_(b)
    # With the inner LN's weight 0 its output is its bias for every token: self-attention then returns out_proj(b)
    # whatever the input, which holds only if the LN is the last step before out_proj.
    x = torch.randn(2, 3, 64, dtype=D64)
    out = layer.self_attn(x)
    torch.testing.assert_close(out, (b @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias)
                               .expand(2, 3, -1), rtol=0, atol=1e-12)


def test_subln_ffn_layernorm_sits_after_gelu_before_fc2():
    ffn = FeedForward(16, 32, dtype=D64).eval()
    _randomise_norms(ffn)
    x = torch.randn(4, 16, dtype=D64)
    torch.testing.assert_close(ffn(x), ref_ffn(x, ffn), rtol=0, atol=1e-12)
    b = torch.randn(32, dtype=D64)
    with torch.no_grad():
        ffn.ffn_layernorm.weight.zero_()
        ffn.ffn_layernorm.bias.copy_(b)
    torch.testing.assert_close(ffn(x), (b @ ffn.fc2.weight.T + ffn.fc2.bias).expand(4, -1), rtol=0, atol=1e-12)


def test_ffn_gelu_is_exact_erf_and_computed_in_fp32():
    ffn = FeedForward(16, 32, dtype=D64).eval()
    _randomise_norms(ffn)
    x = 2 * torch.randn(8, 16, dtype=D64)
    h = x @ ffn.fc1.weight.T + ffn.fc1.bias
    tanh_version = _lin(_ln(F.gelu(h.float(), approximate="tanh").to(D64), ffn.ffn_layernorm), ffn.fc2)
    erf_version = _lin(_ln(_gelu_erf(h.float()).to(D64), ffn.ffn_layernorm), ffn.fc2)
    torch.testing.assert_close(ffn(x), erf_version, rtol=0, atol=1e-5)  # erf formula evaluated in fp32
    assert (ffn(x) - tanh_version).abs().max() > 1e-4  # the tanh approximation is measurably different
    # fp16 module: fc1 in fp16, GELU in fp32, cast back to fp16 before the LayerNorm (feedforward_network.py:124).
    torch.manual_seed(0)
    half = FeedForward(16, 32, dtype=torch.float16).eval()
    xh = torch.randn(8, 16).half()
    h16 = half.fc1(xh)
    expected = half.fc2(half.ffn_layernorm(F.gelu(h16.float()).half()))
    assert torch.equal(half(xh), expected)


def test_vision_mlp_is_quickgelu_by_hand():
    mlp = MLP(4, 4, dtype=D64).eval()
    with torch.no_grad():
        for lin in (mlp.c_fc, mlp.c_proj):
            lin.weight.copy_(torch.eye(4, dtype=D64))
            lin.bias.zero_()
    x = torch.tensor([[1.0, -1.0, 2.0, 0.5]], dtype=D64)
    expected = x * torch.sigmoid(1.702 * x)  # OpenAI CLIP's QuickGELU, forced for ViT-L-14 (kosmosg.py:527-531)
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-15)
    assert (mlp(x) - F.gelu(x)).abs().max() > 1e-3


def test_vision_output_is_ln_post_on_every_token_then_unit_norm_by_hand():
    # Blocks turned into identities (zero out_proj / c_proj), ln_post weight 0 and bias b: every token, the class
    # token included, must come out as b / |b| at full width (no projection).
    vit = VisionTransformer(KosmosGConfig.tiny().vision, dtype=D64).eval()
    b = torch.randn(64, dtype=D64)
    with torch.no_grad():
        for block in vit.transformer.resblocks:
            for lin in (block.ts_attn.out_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
        vit.ln_post.weight.zero_()
        vit.ln_post.bias.copy_(b)
    out = vit(torch.randn(2, 3, 28, 28, dtype=D64))
    torch.testing.assert_close(out, (b / b.norm()).expand(2, 5, -1), rtol=0, atol=1e-12)
    assert all(block.ts_attn.inner_attn_ln is None for block in vit.transformer.resblocks)


def test_vision_class_token_and_positions_by_hand():
    # Zero conv: patch tokens are 0, the class token is class_embedding; positions are added to all 5; then ln_pre.
    vit = VisionTransformer(KosmosGConfig.tiny().vision, dtype=D64).eval()
    seen = {}
    vit.transformer.resblocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].clone()))
    with torch.no_grad():
        vit.conv1.weight.zero_()
    vit(torch.randn(1, 3, 28, 28, dtype=D64))
    tokens = torch.cat([vit.class_embedding[None], torch.zeros(4, 64, dtype=D64)]) + vit.positional_embedding
    torch.testing.assert_close(seen["x"][0], _ln(tokens, vit.ln_pre), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Dropout of each part in training (official values)
# ---------------------------------------------------------------------------------------------------------------
def test_dropout_values_of_each_part(tiny64):
    # The tiny preset keeps the default (official) dropout values of every part.
    model = tiny64
    assert MLLMConfig().dropout == model.mllm.config.dropout
    # MLLM: kosmosg_xl sets dropout 0.1 (embedding, after attention, after FFN); activation dropout 0.
    assert model.mllm.config.dropout == 0.1
    assert all(layer.dropout == 0.1 for layer in model.mllm.layers)
    # Connector: fairseq MultiheadAttention(dropout=args.attention_dropout=0.1) on the attention weights.
    assert model.img_connector.x_attn.dropout == 0.1
    # ViT: open_clip blocks and ts_attn have no dropout.
    assert all(block.ts_attn.dropout == 0.0 for block in model.vision.transformer.resblocks)
    # AlignerNet: EncoderDecoderConfig defaults, all 0 (aligner.py:16-19, config.py:153-156).
    for module in model.aligner.modules():
        if isinstance(module, (Attention, TransformerLayer)):
            assert module.dropout == 0.0


def test_mllm_self_attention_has_no_attention_dropout_in_training(tiny64):
    model = tiny64
    assert all(layer.self_attn.dropout == 0.0 for layer in model.mllm.layers)


def test_aligner_init_follows_official():
    torch.manual_seed(0)
    cfg = AlignerConfig(max_positions=16, encoder_layers=1, decoder_layers=1)  # official widths, 1+1 layers
    aligner = AlignerNet(cfg, mllm_dim=2048).requires_grad_(False)
    # aligner.py:24,34: nn.Parameter(torch.randn(77, 768)) -> std 1.
    assert 0.95 < float(aligner.encoder_query.std()) < 1.05
    # encoder.py:246-262 (is_encoder_decoder=True): fc1/fc2/out_proj/v_proj scaled by
    # sqrt(log(3 * decoder_layers) * log(2 * encoder_layers) / 3) (1.948 at 12 + 12 layers).
    scale = math.sqrt(math.log(3 * cfg.decoder_layers) * math.log(2 * cfg.encoder_layers) / 3)
    default = 1 / math.sqrt(3 * 768)  # std of nn.Linear's default uniform(-1/sqrt(in), 1/sqrt(in))
    fc1 = aligner.encoder_proj.layers[0].ffn.fc1.weight
    assert abs(float(fc1.std()) / default - scale) < 0.05


# ---------------------------------------------------------------------------------------------------------------
# Prompt layout and unconditional prompt (app_model.py:164-197)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_text_transform(tokenizer_dir):
    """app_model.py:65-82 re-stated from the raw files: sp.encode(text, out_type=str), then fairseq
    Dictionary.index (dict.txt entries get ids 4.. after <s> <pad> </s> <unk>; unknown -> 3)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "sentencepiece.bpe.model"))
    lines = (tokenizer_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    index = {line.rsplit(" ", 1)[0]: 4 + i for i, line in enumerate(lines)}
    return lambda text: [index.get(piece, 3) for piece in sp.encode(text, out_type=str)]


def official_preprocess_tokens(prompt: str, negative: str, text_transform, n_images: int, image_token_length=64):
    """kosmosg_preprocess (app_model.py:164-197) re-stated: split once on '<i>' per image, tokenize each snippet,
    `<image>` * 65 + `</image>` per image, slot mask on the 64 after the first `<image>`, no `</s>`;
    negative = [<s>] + tokens."""
    src, mask = [BOS], [0]
    for _ in range(n_images):
        snippet, prompt = prompt.split("<i>", 1)
        ids = text_transform(snippet)
        src += ids + [BOI] * (image_token_length + 1) + [EOI]
        mask += [0] * len(ids) + [0] + [1] * image_token_length + [0]
    ids = text_transform(prompt)
    src += ids
    mask += [0] * len(ids)
    return src, [bool(m) for m in mask], [BOS] + text_transform(negative)


@pytest.mark.parametrize("text", [
    "<i> wearing <i>", "<i> in the style of <i>", "a dog swimming underwater", "", "<i><i>",
    "  a photo of <i>  on the beach ", "<i>", "A <i> and a <i>, and another <i>!",
])
def test_prompt_layout_equals_app_model(kosmos_tokenizer, official_text_transform, text):
    n = text.count("<i>")
    images = [Image.new("RGB", (30, 30), (i * 40, 0, 0)) for i in range(n)]
    ids, slots = prompt_tokens(InterleavedPrompt.from_text(text, images), kosmos_tokenizer)
    src, mask, _ = official_preprocess_tokens(text, "", official_text_transform, n)
    assert ids == src and slots == mask


def test_unconditional_and_negative_tokens_equal_app_model(kosmos_tokenizer, official_text_transform):
    for negative in ("", "blurry, low quality", " ugly "):
        _, _, official = official_preprocess_tokens("", negative, official_text_transform, 0)
        # encode_condition takes max([[0]], negative_tokens, key=length): [<s>] when the negative prompt is empty.
        batch = collate([InterleavedPrompt.from_text(negative)], kosmos_tokenizer)
        assert batch.tokens[0].tolist() == official and not batch.image_mask.any()


def test_null_condition_is_aligner_of_mllm_of_bos(tiny64, kosmos_tokenizer):
    model = tiny64
    model.tokenizer = kosmos_tokenizer
    null_token = torch.tensor([[BOS]])
    expected = ref_aligner_m(ref_mllm(null_token, model.mllm), null_token.eq(PAD), model.aligner)
    torch.testing.assert_close(model.null_condition(), expected, rtol=0, atol=1e-10)
    neg = torch.tensor([[BOS] + kosmos_tokenizer.encode("blurry")])
    expected = ref_aligner_m(ref_mllm(neg, model.mllm), neg.eq(PAD), model.aligner)
    torch.testing.assert_close(model.null_condition("blurry"), expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# Image preprocessing (app_model.py:50-63, NumpyNormalize)
# ---------------------------------------------------------------------------------------------------------------
def _row_coded(width: int, height: int) -> Image.Image:
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], width, axis=1)
    cols = np.repeat(np.arange(width, dtype=np.uint8)[None, :], height, axis=0)
    return Image.fromarray(np.stack([rows, cols, np.zeros_like(rows)], axis=-1))


@pytest.mark.parametrize(("size", "top", "left"), [
    ((224, 225), 0, 0),  # (225-224)/2 = 0.5 -> round-half-even 0
    ((224, 227), 2, 0),  # 1.5 -> 2
    ((224, 229), 2, 0),  # 2.5 -> 2
    ((231, 224), 0, 4),  # 3.5 -> 4
])
def test_center_crop_offsets_use_torchvision_rounding(size, top, left):
    # The short side is already 224, so no resampling happens and the crop offsets can be read off the pixels.
    out = np.asarray(resize_and_crop(_row_coded(*size), 224))
    assert out[0, 0, 0] == top and out[0, 0, 1] == left


def test_resize_long_side_is_truncated():
    # torchvision _compute_resized_output_size: long = int(224 * long / short): 300x301 -> 224x224 (224.74 -> 224).
    seen = {}
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        seen["size"] = size
        return original(self, size, *args, **kwargs)

    Image.Image.resize = spy
    try:
        resize_and_crop(Image.new("RGB", (300, 301)), 224)
        resize_and_crop(Image.new("RGB", (500, 333)), 224)  # long = int(224 * 500 / 333) = 336
    finally:
        Image.Image.resize = original
    assert seen["size"] == (336, 224)


def test_normalisation_is_float64_and_rounds_to_half_like_the_official_path():
    # Official: float64 numpy maths, then torch.stack(...).to(float16) (app_model.py:169,187). The pack hands the
    # model float32 which the model casts to its dtype: for all 3 x 256 possible input values the double rounding
    # float64 -> float32 -> float16/bfloat16 equals the direct float64 -> float16/bfloat16 rounding.
    values = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.stack([np.tile(values, (256, 1))] * 3, axis=-1))
    ours = normalize(image)
    official = (np.asarray(image).transpose(2, 0, 1) / 255.0 - np.array(CLIP_MEAN).reshape(-1, 1, 1))
    official = official / np.array(CLIP_STD).reshape(-1, 1, 1)
    assert torch.equal(ours, torch.from_numpy(official.astype(np.float32)))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(ours.to(dtype), torch.from_numpy(official).to(dtype))


def test_opaque_and_greyscale_images_match_pil_convert_rgb():
    # The official paths call PIL .convert("RGB") (gradio image_mode "RGB"; every loader). For opaque RGBA, greyscale
    # and palette images the pack's conversion gives the same pixels. (Transparent pixels differ on purpose: the pack
    # composites them over white, .convert("RGB") keeps whatever colour they hold; see the faithfulness report.)
    from kosmos_g_core.image import preprocess

    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (40, 37, 3), dtype=np.uint8)
    opaque = Image.fromarray(np.concatenate([rgb, np.full((40, 37, 1), 255, np.uint8)], axis=-1))
    grey = Image.fromarray(rgb[..., 0])
    palette = Image.fromarray(rgb).convert("P")
    for image in (opaque, grey, palette):
        assert torch.equal(preprocess(image), normalize(resize_and_crop(image.convert("RGB"), 224)))
