"""Architecture configs of KOSMOS-G, as frozen dataclasses with named presets.

The official sizes follow the `kosmosg_xl` architecture of microsoft/unilm `kosmos-g/` (reference/kosmos_g.md §3, §4,
§8). A checkpoint's config is always detected from its tensor shapes (`detect_config`), never from a file name.
Head width is 64 in every attention of the model, so head counts are derived from widths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

HEAD_DIM = 64


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT-L/14 at 224 px, without the 1024->768 projection (the official model drops it)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: int = 4

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + class token: 257 at 224/14


@dataclass(frozen=True)
class MLLMConfig:
    """The causal multimodal LM (a MAGNETO Sub-LN GPT, no rotary/xPos)."""

    vocab_size: int = 64007
    dim: int = 2048
    layers: int = 24
    heads: int = 32
    ffn_dim: int = 8192
    max_positions: int = 2048  # official tokens_per_sample; fairseq sinusoids have no table to read it from
    pad_id: int = 1
    dropout: float = 0.1  # training only: residual and embedding dropout
    # The official runs use --flash-attention, and the MLLM's causal self-attention then goes through xformers'
    # memory_efficient_attention without a dropout probability (torchscale multihead_attention.py:159-161), so the
    # configured 0.1 never acts there.
    attention_dropout: float = 0.0


@dataclass(frozen=True)
class ConnectorConfig:
    """The resampler: 64 latent queries cross-attend over [projected ViT tokens; queries]."""

    num_queries: int = 64
    heads: int = 32
    attention_dropout: float = 0.1


@dataclass(frozen=True)
class AlignerConfig:
    """AlignerNet: encoder M (MLLM states -> 77 x 768 SD1.5 CLIP-text space) and, for stage 2, decoder N."""

    dim: int = 768
    heads: int = 12
    ffn_dim: int = 3072
    encoder_layers: int = 12
    decoder_layers: int = 12
    num_queries: int = 77
    max_positions: int = 32768
    with_decoder: bool = False  # AlignerNet N, only needed to train stage 2


@dataclass(frozen=True)
class KosmosGConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    aligner: AlignerConfig | None = field(default_factory=AlignerConfig)

    @classmethod
    def official(cls) -> KosmosGConfig:
        """The released KOSMOS-G (1,887,837,696 parameters without the diffusion parts)."""
        return cls()

    @classmethod
    def tiny(cls) -> KosmosGConfig:
        """A few-MB model for tests. It keeps the real vocabulary (so the real tokenizer works), the 64 image slots
        and a 768-d AlignerNet output, so its conditioning fits an SD1.5-shaped U-Net."""
        return cls(
            vision=VisionConfig(image_size=28, patch_size=14, width=64, layers=2, heads=1),
            mllm=MLLMConfig(dim=128, layers=2, heads=2, ffn_dim=256),
            connector=ConnectorConfig(num_queries=64, heads=2),
            aligner=AlignerConfig(dim=768, heads=12, ffn_dim=256, encoder_layers=1, decoder_layers=1,
                                  max_positions=512),
        )

    @property
    def image_tokens(self) -> int:
        return self.connector.num_queries

    @property
    def condition_shape(self) -> tuple[int, int]:
        if self.aligner is None:
            raise ValueError("this KOSMOS-G model has no AlignerNet, so it produces no diffusion conditioning")
        return self.aligner.num_queries, self.aligner.dim

    def with_decoder(self, enabled: bool = True) -> KosmosGConfig:
        if self.aligner is None:
            raise ValueError("cannot add AlignerNet N to a model without AlignerNet")
        return replace(self, aligner=replace(self.aligner, with_decoder=enabled))

    def without_aligner(self) -> KosmosGConfig:
        return replace(self, aligner=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KosmosGConfig:
        aligner = d.get("aligner")
        return cls(
            vision=VisionConfig(**d["vision"]),
            mllm=MLLMConfig(**d["mllm"]),
            connector=ConnectorConfig(**d["connector"]),
            aligner=AlignerConfig(**aligner) if aligner is not None else None,
        )


PRESETS: dict[str, KosmosGConfig] = {"official": KosmosGConfig.official(), "tiny": KosmosGConfig.tiny()}


def _count_layers(shapes: Mapping[str, Sequence[int]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    if indices and indices != set(range(len(indices))):
        raise ValueError(f"layers under '{prefix}' are not numbered 0..{len(indices) - 1}: found {sorted(indices)}")
    return len(indices)


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise KeyError(key)
    return tuple(int(s) for s in shapes[key])


def detect_config(shapes: Mapping[str, Sequence[int]], *, max_positions: int | None = None) -> KosmosGConfig:
    """Rebuild the architecture from a state dict's `{key: shape}` (official fairseq key names).

    Raises KeyError naming the first tensor that is needed and absent: callers turn it into a message about the file.
    `max_positions` of the MLLM is not stored in any tensor (fairseq sinusoids are computed), so it can be given.
    """
    conv = _shape(shapes, "img_model.visual.conv1.weight")  # (width, 3, patch, patch)
    width, patch = conv[0], conv[2]
    num_pos = _shape(shapes, "img_model.visual.positional_embedding")[0]
    grid = round((num_pos - 1) ** 0.5)
    vision = VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_count_layers(shapes, "img_model.visual.transformer.resblocks."),
        heads=max(1, width // HEAD_DIM),
        mlp_ratio=_shape(shapes, "img_model.visual.transformer.resblocks.0.mlp.c_fc.weight")[0] // width,
    )

    vocab, dim = _shape(shapes, "gpt_model.decoder.embed_tokens.weight")
    mllm = MLLMConfig(
        vocab_size=vocab,
        dim=dim,
        layers=_count_layers(shapes, "gpt_model.decoder.layers."),
        heads=max(1, dim // HEAD_DIM),
        ffn_dim=_shape(shapes, "gpt_model.decoder.layers.0.ffn.fc1.weight")[0],
        max_positions=max_positions or MLLMConfig.max_positions,
    )
    connector = ConnectorConfig(
        num_queries=_shape(shapes, "img_connector.latent_query")[0], heads=max(1, dim // HEAD_DIM)
    )

    aligner = None
    if any(k.startswith("aligner.") for k in shapes):
        queries, a_dim = _shape(shapes, "aligner.encoder_query")
        aligner = AlignerConfig(
            dim=a_dim,
            heads=max(1, a_dim // HEAD_DIM),
            ffn_dim=_shape(shapes, "aligner.encoder_proj.layers.0.ffn.fc1.weight")[0],
            encoder_layers=_count_layers(shapes, "aligner.encoder_proj.layers."),
            decoder_layers=_count_layers(shapes, "aligner.encoder.layers."),
            num_queries=queries,
            max_positions=_shape(shapes, "aligner.encoder_proj.embed_positions.weight")[0],
            with_decoder="aligner.decoder_query" in shapes,
        )
    return KosmosGConfig(vision=vision, mllm=mllm, connector=connector, aligner=aligner)
