"""Architecture configs of KOSMOS-G, as frozen dataclasses with named presets.

The official sizes follow the `kosmosg_xl` architecture of microsoft/unilm `kosmos-g/` (official
`kosmos-g/unilm/models/kosmosg.py:611-622`). A checkpoint's config is detected from its tensor shapes
(`detect_config`), never from a file name. Shapes
cannot say everything: head counts, the MLLM's maximum length and the dropouts (`UNSHAPED_FIELDS`) are stored in the
pack's file, or given by the caller, or assumed (heads: one per 64 channels, the official head width).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# The assumed head width when a file does not say the head counts: the official model uses 64 everywhere (MLLM
# 2048/32, ViT 1024/16, connector 2048/32, AlignerNet 768/12), but a custom size need not.
HEAD_DIM = 64


def _check_heads(where: str, width: int, heads: int) -> None:
    if not isinstance(heads, int) or heads < 1 or width % heads:
        raise ValueError(f"{where}: {heads!r} attention heads do not divide its width {width}")


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT-L/14 at 224 px, without the 1024->768 projection (the official model drops it)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        _check_heads("the vision transformer", self.width, self.heads)

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

    def __post_init__(self) -> None:
        _check_heads("the MLLM", self.dim, self.heads)


@dataclass(frozen=True)
class ConnectorConfig:
    """The resampler: 64 latent queries cross-attend over [projected ViT tokens; queries]."""

    num_queries: int = 64
    heads: int = 32
    attention_dropout: float = 0.1


@dataclass(frozen=True)
class AlignerConfig:
    """AlignerNet: encoder M (MLLM states -> 77 x 768 SD1.5 CLIP-text space) and, for stage 2, decoder N.

    The SDXL variant adds two output heads on M (and nothing else): `context_dim` is the width of SDXL's
    cross-attention context (2048: CLIP-L's 768 and OpenCLIP bigG's 1280 penultimate states, concatenated), to which
    M's `dim`-wide tokens are projected; `pooled_dim` is the width of SDXL's pooled text vector (1280, bigG's
    projected end-of-text state), made by a pooled head reading that context. Both None is the official SD1.5
    AlignerNet, whose `dim`-wide output is the context itself. Both are read from tensor shapes.
    """

    dim: int = 768
    heads: int = 12
    ffn_dim: int = 3072
    encoder_layers: int = 12
    decoder_layers: int = 12
    num_queries: int = 77
    max_positions: int = 32768
    with_decoder: bool = False  # AlignerNet N, only needed to train stage 2
    context_dim: int | None = None  # SDXL: M's tokens projected to this width (2048); None: the output is `dim` wide
    pooled_dim: int | None = None  # SDXL: the pooled head's width (1280); None: no pooled vector (SD1.5)

    def __post_init__(self) -> None:
        _check_heads("AlignerNet", self.dim, self.heads)
        if (self.context_dim is None) != (self.pooled_dim is None):
            raise ValueError(
                f"AlignerNet has context_dim={self.context_dim!r} and pooled_dim={self.pooled_dim!r}: the SDXL output "
                "heads (context projection and pooled head) come together, so both are set or neither is"
            )
        for name in ("context_dim", "pooled_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"AlignerNet {name} must be a positive width, got {value!r}")

    @property
    def output_dim(self) -> int:
        """The width of M's output, the U-Net's cross-attention context: `context_dim` (SDXL) or `dim` (SD1.5)."""
        return self.context_dim if self.context_dim is not None else self.dim

    @property
    def is_sdxl(self) -> bool:
        """True for the SDXL variant (context projection + pooled head), False for the official SD1.5 AlignerNet."""
        return self.pooled_dim is not None

    @property
    def max_tokens(self) -> int:
        """The longest MLLM sequence AlignerNet reads: token t uses position row 2 + t (torchscale's learned
        positions keep rows 0 and 1 for padding), so two rows of the table are never used."""
        return self.max_positions - 2


@dataclass(frozen=True)
class KosmosGConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    aligner: AlignerConfig | None = field(default_factory=AlignerConfig)

    def __post_init__(self) -> None:
        _check_heads("the image connector", self.mllm.dim, self.connector.heads)

    @classmethod
    def official(cls) -> KosmosGConfig:
        """The released KOSMOS-G (1,887,837,696 parameters without the diffusion parts)."""
        return cls()

    @classmethod
    def sdxl(cls) -> KosmosGConfig:
        """KOSMOS-G for SDXL: the official model and AlignerNet (same widths, depths and heads, so the official
        recipe's stage-2 hyper-parameters carry over) with SDXL's output heads: a (B, 77, 2048) context and a
        (B, 1280) pooled vector. Its AlignerNet must be trained against SDXL's text encoders (stages 2-3)."""
        return cls(aligner=AlignerConfig(context_dim=2048, pooled_dim=1280))

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

    @classmethod
    def tiny_sdxl(cls) -> KosmosGConfig:
        """`tiny` with a 64-wide AlignerNet and SDXL's output heads (2048-d context, 1280-d pooled), so its
        conditioning fits an SDXL-shaped U-Net; a few MB, for tests."""
        tiny = cls.tiny()
        return replace(tiny, aligner=replace(tiny.aligner, dim=64, heads=1, ffn_dim=128, context_dim=2048,
                                              pooled_dim=1280))

    @property
    def image_tokens(self) -> int:
        return self.connector.num_queries

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt (in MLLM positions, <s> and each image's 66 included) the whole model reads: the MLLM's
        length and, when there is one, AlignerNet's. The one rule every length check uses."""
        if self.aligner is None:
            return self.mllm.max_positions
        return min(self.mllm.max_positions, self.aligner.max_tokens)

    @property
    def condition_shape(self) -> tuple[int, int]:
        if self.aligner is None:
            raise ValueError("this KOSMOS-G model has no AlignerNet, so it produces no diffusion conditioning")
        return self.aligner.num_queries, self.aligner.output_dim

    @property
    def pooled_dim(self) -> int | None:
        """The width of the pooled vector (1280 for SDXL), or None when the model makes none (SD1.5, no AlignerNet)."""
        return self.aligner.pooled_dim if self.aligner is not None else None

    def with_decoder(self, enabled: bool = True) -> KosmosGConfig:
        if self.aligner is None:
            raise ValueError("cannot add AlignerNet N to a model without AlignerNet")
        return replace(self, aligner=replace(self.aligner, with_decoder=enabled))

    def without_aligner(self) -> KosmosGConfig:
        return replace(self, aligner=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the file's metadata. The SDXL heads' fields are written only when set, so an SD1.5
        config stores exactly what it stored before they existed (and older pack versions still read it)."""
        d = asdict(self)
        if d["aligner"] is not None:
            for name in _OPTIONAL_ALIGNER_FIELDS:
                if d["aligner"][name] is None:
                    del d["aligner"][name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KosmosGConfig:
        """The inverse of `to_dict`. A missing field takes its default; an unknown one is a ValueError naming it."""

        def section(kind: type, name: str):
            values = d.get(name)
            if not isinstance(values, Mapping):
                raise ValueError(f"config section '{name}' is {type(values).__name__}, expected a mapping")
            unknown = sorted(set(values) - {f.name for f in fields(kind)})
            if unknown:
                raise ValueError(f"config section '{name}' has unknown field(s) {unknown}")
            return kind(**values)

        return cls(
            vision=section(VisionConfig, "vision"),
            mllm=section(MLLMConfig, "mllm"),
            connector=section(ConnectorConfig, "connector"),
            aligner=section(AlignerConfig, "aligner") if d.get("aligner") is not None else None,
        )


# Fields added after format 2 that `to_dict` leaves out while unset (see there).
_OPTIONAL_ALIGNER_FIELDS = ("context_dim", "pooled_dim")

PRESETS: dict[str, KosmosGConfig] = {"official": KosmosGConfig.official(), "tiny": KosmosGConfig.tiny(),
                                     "sdxl": KosmosGConfig.sdxl(), "tiny_sdxl": KosmosGConfig.tiny_sdxl()}

# The fields no tensor shape determines, per config section: a file must store them (the pack's does) or they are
# given or assumed. Every other field is read from the shapes by `detect_config`.
UNSHAPED_FIELDS: dict[str, tuple[str, ...]] = {
    "vision": ("heads",),
    "mllm": ("heads", "max_positions", "pad_id", "dropout", "attention_dropout"),
    "connector": ("heads", "attention_dropout"),
    "aligner": ("heads",),
}


def shape_mismatches(config: KosmosGConfig, detected: KosmosGConfig) -> list[str]:
    """Every field the shapes determine on which `config` and `detected` (from the tensors) disagree, as text."""
    if (config.aligner is None) != (detected.aligner is None):
        has = "no AlignerNet" if config.aligner is None else "an AlignerNet"
        return [f"aligner: the config has {has} but the tensors {'do not' if detected.aligner is None else 'do'}"]
    out = []
    for name, unshaped in UNSHAPED_FIELDS.items():
        ours, theirs = getattr(config, name), getattr(detected, name)
        if ours is None:
            continue
        for f in fields(ours):
            if f.name not in unshaped and getattr(ours, f.name) != getattr(theirs, f.name):
                out.append(f"{name}.{f.name} is {getattr(ours, f.name)!r} in the config but "
                           f"{getattr(theirs, f.name)!r} in the tensors")
    return out


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


def detect_config(shapes: Mapping[str, Sequence[int]], *, max_positions: int | None = None,
                  heads: Mapping[str, int] | None = None) -> KosmosGConfig:
    """Rebuild the architecture from a state dict's `{key: shape}` (official fairseq key names).

    Raises KeyError naming the first tensor that is needed and absent: callers turn it into a message about the file.
    What no tensor holds is given: `max_positions` of the MLLM (fairseq sinusoids are computed), and `heads`, a
    mapping from "vision", "mllm", "connector", "aligner" to head counts. A head count not given is one per
    HEAD_DIM channels; the connector's defaults to the MLLM's, since the official XConnector is built with
    `args.decoder_attention_heads` (kosmos-g/unilm/models/connector.py:64-66). A count that does not divide its
    width is a ValueError.
    """
    heads = dict(heads or {})
    unknown = sorted(set(heads) - set(UNSHAPED_FIELDS))
    if unknown:
        raise ValueError(f"unknown attention(s) {unknown} in heads; expected some of {sorted(UNSHAPED_FIELDS)}")
    conv = _shape(shapes, "img_model.visual.conv1.weight")  # (width, 3, patch, patch)
    width, patch = conv[0], conv[2]
    num_pos = _shape(shapes, "img_model.visual.positional_embedding")[0]
    grid = round((num_pos - 1) ** 0.5)
    vision = VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_count_layers(shapes, "img_model.visual.transformer.resblocks."),
        heads=heads.get("vision", max(1, width // HEAD_DIM)),
        mlp_ratio=_shape(shapes, "img_model.visual.transformer.resblocks.0.mlp.c_fc.weight")[0] // width,
    )

    vocab, dim = _shape(shapes, "gpt_model.decoder.embed_tokens.weight")
    mllm = MLLMConfig(
        vocab_size=vocab,
        dim=dim,
        layers=_count_layers(shapes, "gpt_model.decoder.layers."),
        heads=heads.get("mllm", max(1, dim // HEAD_DIM)),
        ffn_dim=_shape(shapes, "gpt_model.decoder.layers.0.ffn.fc1.weight")[0],
        max_positions=max_positions or MLLMConfig.max_positions,
    )
    connector = ConnectorConfig(
        num_queries=_shape(shapes, "img_connector.latent_query")[0], heads=heads.get("connector", mllm.heads)
    )

    aligner = None
    if any(k.startswith("aligner.") for k in shapes):
        queries, a_dim = _shape(shapes, "aligner.encoder_query")
        aligner = AlignerConfig(
            dim=a_dim,
            heads=heads.get("aligner", max(1, a_dim // HEAD_DIM)),
            ffn_dim=_shape(shapes, "aligner.encoder_proj.layers.0.ffn.fc1.weight")[0],
            encoder_layers=_count_layers(shapes, "aligner.encoder_proj.layers."),
            decoder_layers=_count_layers(shapes, "aligner.encoder.layers."),
            num_queries=queries,
            max_positions=_shape(shapes, "aligner.encoder_proj.embed_positions.weight")[0],
            with_decoder="aligner.decoder_query" in shapes,
            # The SDXL heads: present in an SDXL file only (AlignerNet.context_proj / .pooled_head).
            context_dim=_shape(shapes, "aligner.context_proj.weight")[0] if "aligner.context_proj.weight" in shapes
            else None,
            pooled_dim=_shape(shapes, "aligner.pooled_head.proj.weight")[0]
            if "aligner.pooled_head.proj.weight" in shapes else None,
        )
    return KosmosGConfig(vision=vision, mllm=mllm, connector=connector, aligner=aligner)
