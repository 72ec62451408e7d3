"""Reading the official KOSMOS-G fairseq checkpoints safely, and mapping their keys to the pack's.

The official files (`checkpoint_final.pt`, `checkpoint_stage2.pt`, ...) are PyTorch pickles: a dict whose "model"
entry is the flat state dict of the fairseq `KosmosGmodel`. The pack's modules use the official key names, so the
mapping is only: take "model", drop what the pack never uses, and check everything else is a known key.

Safety: unpickling runs `torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers and
refuses every other global before calling anything. The allow-list below adds only what fairseq writes besides the
weights: `argparse.Namespace` (the legacy "args" entry) and the containers of an OmegaConf config ("cfg"), the latter
mapped to inert record classes defined here, so no OmegaConf code (or any other code) runs and OmegaConf need not be
installed. The bundled fairseq of the official code stores "cfg" as plain dicts and "args" as None, so the released
files need nothing beyond torch's own defaults; the extras cover trainer checkpoints of other fairseq versions.
Anything else (a class of the training code, numpy objects, a function) is refused with the file and the global named.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import struct
import typing
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch

from .checkpoint import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "ConversionError",
    "OfficialMapping",
    "map_official_state_dict",
    "OfficialHeads",
    "read_official_checkpoint",
    "read_official_state_dict",
    "resolve_heads",
    "safe_torch_load",
]

# The prefixes of every tensor the pack keeps (official fairseq module names, the module tree of official `kosmos-g/unilm/models/kosmosg.py:167-194`).
PACK_PREFIXES = ("gpt_model.decoder.", "img_model.visual.", "img_connector.", "aligner.")
EMBED_KEY = "gpt_model.decoder.embed_tokens.weight"
TIED_OUTPUT_KEY = "gpt_model.decoder.output_projection.weight"

# (pattern, reason) of official keys the pack never loads.
_IGNORED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"gpt_model\.decoder\.embed_positions\._float_tensor"), "fairseq sinusoidal-position dummy buffer"),
    (re.compile(r"gpt_model\.decoder\.self_attn_sope\.scale"), "SoPE buffer, built but never used by the MLLM"),
    (
        re.compile(r"img_model\.visual\.transformer\.resblocks\.\d+\.attn\..+"),
        "unused open_clip attention copy (the model uses ts_attn)",
    ),
    (re.compile(r"diffusion_unet\..+"), "Stable Diffusion 1.5 U-Net (ComfyUI loads its own)"),
    (re.compile(r"vae\..+"), "Stable Diffusion 1.5 VAE (ComfyUI loads its own)"),
    (re.compile(r"aligner\.clip_encoder\..+"), "frozen SD-1.5 CLIP text encoder (stage-2 training target only)"),
)
# AlignerNet N, the stage-2 reconstruction decoder: kept only when asked (to resume stage-2 training).
_ALIGNER_DECODER = re.compile(r"aligner\.(decoder_query|decoder\..+|decoder_proj\..+)")

# ---------------------------------------------------------------------------------------------------------------------
# Safe unpickling


class ConversionError(CheckpointError):
    """A source file cannot be converted; the message names the file and what was expected."""


class _InertRecord:
    """Stand-in for a configuration object in a checkpoint: unpickling only fills its __dict__; it has no behaviour."""


def _inert(name: str) -> tuple[type, str]:
    return type(name.rsplit(".", 1)[1], (_InertRecord,), {"__module__": __name__}), name


_OMEGACONF_NAMES = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
)

# Everything here is data: a class whose unpickling only sets attributes, or a builtin type that OmegaConf's metadata
# refers to (ref_type/object_type) and whose construction from plain values runs no user code.
FAIRSEQ_SAFE_GLOBALS: tuple[Any, ...] = (
    argparse.Namespace,
    (typing.Any, "typing.Any"),
    collections.defaultdict,
    dict,
    list,
    tuple,
    str,
    int,
    float,
    bool,
    *(_inert(name) for name in _OMEGACONF_NAMES),
)


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then a JSON object."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _refusal(path: Path, refused: list[str]) -> ConversionError:
    names = ", ".join(sorted(set(refused)))
    return ConversionError(
        f"{path}: refused to unpickle: the file needs {names}, which is not plain checkpoint data "
        "(tensors, containers, argparse.Namespace, OmegaConf configs). Nothing in the file was executed. "
        "If you trust this file, re-save only its weights in the environment that wrote it, e.g. "
        "`torch.save({'model': torch.load(path, weights_only=False)['model']}, 'stripped.pt')`, and convert that."
    )


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|got <class '([\w.]+)'>")


def safe_torch_load(path: str | Path, mmap: bool = True) -> Any:
    """`torch.load(path, weights_only=True)` with the fairseq allow-list; errors name the file and the refused global.

    With `mmap` (zip-format files only) tensors stay on disk until read, so optimizer state in a trainer checkpoint
    costs no memory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (expected an official KOSMOS-G fairseq checkpoint, .pt)")
    is_zip = _is_zip(path)
    with torch.serialization.safe_globals(list(FAIRSEQ_SAFE_GLOBALS)):
        if is_zip:
            # Static scan of the pickle: lists every refused global at once, before anything is unpickled.
            try:
                refused = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except Exception as e:  # a broken archive: reported by torch.load below with a clearer message
                log.debug("global scan of %s failed: %s", path, e)
                refused = []
            if refused:
                raise _refusal(path, refused)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
        except UnpicklingError as e:
            match = _GLOBAL_IN_MESSAGE.search(str(e))
            if match:
                raise _refusal(path, [next(g for g in match.groups() if g)]) from None
            raise ConversionError(
                f"{path}: not a PyTorch checkpoint ({e}); expected an official KOSMOS-G fairseq .pt file. "
                "Nothing in the file was executed."
            ) from None
        except Exception as e:  # the unpickler's errors on garbage input are of many kinds (KeyError, EOFError, ...)
            raise ConversionError(
                f"{path}: cannot read it as a PyTorch checkpoint ({type(e).__name__}: {e}). The file is truncated "
                "or is not a torch.save file (nothing in it was executed); expected an official KOSMOS-G fairseq .pt file (re-download or re-copy "
                "it and compare its size)."
            ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        # load_file maps the file; tensors are read as they are used.
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read this safetensors file ({e}); it may be truncated.") from None


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an official checkpoint: `state["model"]`, or the dict itself if it has no "model".

    Also accepts a .safetensors file holding the official key names.
    """
    return read_official_checkpoint(path)[0]


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], OfficialHeads]:
    """`read_official_state_dict`, plus the MLLM head count when the file's training config holds it."""
    path = Path(path)
    if path.is_file() and _is_safetensors(path):
        return _read_safetensors(path), OfficialHeads()
    state = safe_torch_load(path)
    return _state_dict_of(path, state), _mllm_heads_in(path, state)


def _state_dict_of(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping) and "model" in state:
        state = state["model"]
    elif isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        inner = state["state_dict"]
        if any(k.startswith(PACK_PREFIXES) for k in inner):
            state = inner
        else:
            raise ConversionError(
                f"{path}: this is not a KOSMOS-G checkpoint: it holds a 'state_dict' with keys like "
                f"{_examples(inner)} (a Stable Diffusion / PyTorch Lightning checkpoint?). Expected an official "
                f"KOSMOS-G fairseq file whose 'model' holds keys starting with {', '.join(PACK_PREFIXES)}."
            )
    if not isinstance(state, Mapping):
        raise ConversionError(
            f"{path}: expected a dict of tensors (or a dict with a 'model' entry), found {type(state).__name__}."
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    others = sorted(k for k in state if k not in tensors)
    if others:
        raise ConversionError(f"{path}: the state dict has entries that are not tensors: {others[:10]}")
    return tensors


# ---------------------------------------------------------------------------------------------------------------------
# Head counts: no tensor holds them. The MLLM's is in the training config of a fairseq file (when not stripped); the
# others are fixed by the official code and taken as options here.

# The ViT is open_clip's "ViT-L-14" (kosmos-g/unilm/models/kosmosg.py:527-531), whose config sets head_width 64
# (open_clip/src/open_clip/model_configs/ViT-L-14.json): one head per 64 channels, 16 at width 1024.
OFFICIAL_VISION_HEAD_WIDTH = 64
# The MLLM of the kosmosg_xl architecture: 32 heads at width 2048 (kosmos-g/unilm/models/kosmosg.py:614-616), one per
# 64 channels; used only when the file does not say.
OFFICIAL_MLLM_HEAD_WIDTH = 64
# AlignerNet's EncoderDecoderConfig is built without head counts (kosmos-g/unilm/models/aligner.py:16-19,73-76), so
# torchscale's default of 12 applies whatever the width (kosmos-g/torchscale/torchscale/architecture/config.py:140-207).
OFFICIAL_ALIGNER_HEADS = 12


@dataclass(frozen=True)
class OfficialHeads:
    """The MLLM head count found in an official file, and where (e.g. "cfg['model']['decoder_attention_heads']")."""

    mllm: int | None = None
    where: str = ""


def _field(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    if isinstance(container, argparse.Namespace):
        return getattr(container, name, None)
    return None


def _mllm_heads_in(path: Path, state: Any) -> OfficialHeads:
    """`cfg['model']['decoder_attention_heads']` (fairseq with dataclass configs), else the legacy
    `args.decoder_attention_heads`; the connector uses the same value (connector.py:64-66)."""
    if not isinstance(state, Mapping):
        return OfficialHeads()
    found = ((_field(_field(state.get("cfg"), "model"), "decoder_attention_heads"),
              "cfg['model']['decoder_attention_heads']"),
             (_field(state.get("args"), "decoder_attention_heads"), "args.decoder_attention_heads"))
    for value, where in found:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConversionError(f"{path}: {where} is {value!r}; expected a positive number of attention heads")
        return OfficialHeads(value, where)
    return OfficialHeads()


def resolve_heads(source: str | Path, shapes: Mapping[str, typing.Sequence[int]], found: OfficialHeads, *,
                  vision: int | None = None, mllm: int | None = None, aligner: int | None = None,
                  ) -> tuple[dict[str, int], list[str]]:
    """The head counts of an official model (for `detect_config`) and one line per attention saying where each
    count came from. Given counts win over the official defaults; a given MLLM count that contradicts the file is an
    error. Shapes are only read for the widths the defaults divide."""
    if mllm is not None and found.mllm is not None and mllm != found.mllm:
        raise ConversionError(f"{source}: --mllm-heads {mllm} contradicts the file, whose {found.where} is "
                              f"{found.mllm}; leave the option out")
    notes = []
    heads: dict[str, int] = {}
    embed = shapes.get("gpt_model.decoder.embed_tokens.weight")  # (vocab, MLLM width)
    conv = shapes.get("img_model.visual.conv1.weight")  # (ViT width, 3, patch, patch)
    if found.mllm is not None:
        heads["mllm"] = found.mllm
        notes.append(f"MLLM {found.mllm} heads (read from the file's {found.where})")
    elif mllm is not None:
        heads["mllm"] = mllm
        notes.append(f"MLLM {mllm} heads (--mllm-heads)")
    elif embed is not None:
        heads["mllm"] = max(1, embed[1] // OFFICIAL_MLLM_HEAD_WIDTH)
        notes.append(f"MLLM {heads['mllm']} heads (assumed: the file does not say; one per "
                     f"{OFFICIAL_MLLM_HEAD_WIDTH} channels as the official model; --mllm-heads to change)")
    if "mllm" in heads:
        heads["connector"] = heads["mllm"]
        notes.append(f"connector {heads['connector']} heads (the MLLM's, as the official XConnector)")
    if vision is not None:
        heads["vision"] = vision
        notes.append(f"ViT {vision} heads (--vision-heads)")
    elif conv is not None:
        heads["vision"] = max(1, conv[0] // OFFICIAL_VISION_HEAD_WIDTH)
        notes.append(f"ViT {heads['vision']} heads (assumed: one per {OFFICIAL_VISION_HEAD_WIDTH} channels as the "
                     "official ViT-L-14; --vision-heads to change)")
    if any(k.startswith("aligner.") for k in shapes):
        heads["aligner"] = aligner if aligner is not None else OFFICIAL_ALIGNER_HEADS
        how = ("--aligner-heads" if aligner is not None
               else f"assumed: the official AlignerNet's fixed {OFFICIAL_ALIGNER_HEADS}; --aligner-heads to change")
        notes.append(f"AlignerNet {heads['aligner']} heads ({how})")
    return heads, notes


def _examples(keys: typing.Iterable[str], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in list(keys)[:n])


# ---------------------------------------------------------------------------------------------------------------------
# Key mapping


@dataclass
class OfficialMapping:
    """Outcome of mapping an official state dict: the pack's state dict and what was dropped, with reasons."""

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys

    def drop(self, reason: str, key: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def summary(self) -> str:
        return "; ".join(f"{len(keys)} x {reason}" for reason, keys in self.dropped.items()) or "nothing"


def map_official_state_dict(
    state: Mapping[str, torch.Tensor], keep_aligner_decoder: bool = False, source: str | Path = "<state dict>"
) -> OfficialMapping:
    """Drop the keys the pack never loads, check the tied output projection, and reject unknown keys.

    `keep_aligner_decoder` keeps AlignerNet N (`aligner.decoder*`) of a stage-2 checkpoint. Key names are otherwise
    unchanged: the pack's module tree uses the official names.
    """
    out = OfficialMapping(state_dict={})
    unknown: list[str] = []
    for key, tensor in state.items():
        reason = next((why for pattern, why in _IGNORED if pattern.fullmatch(key)), None)
        if reason is not None:
            out.drop(reason, key)
        elif key == TIED_OUTPUT_KEY:
            out.drop("output projection tied to embed_tokens", key)
        elif _ALIGNER_DECODER.fullmatch(key) and not keep_aligner_decoder:
            out.drop("AlignerNet N (stage-2 reconstruction decoder; keep it with --keep-aligner-decoder)", key)
        elif key.startswith(PACK_PREFIXES):
            out.state_dict[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        hint = ""
        if not any(k.startswith(PACK_PREFIXES) for k in state):
            hint = " This is not a KOSMOS-G checkpoint (a Stable Diffusion or other model?)."
        raise ConversionError(
            f"{source}: {len(unknown)} unexpected keys, e.g. {_examples(unknown, 8)}.{hint} Expected official "
            f"KOSMOS-G keys starting with {', '.join(PACK_PREFIXES)}."
        )
    if TIED_OUTPUT_KEY in state:
        if EMBED_KEY not in state:
            raise ConversionError(f"{source}: has {TIED_OUTPUT_KEY} but no {EMBED_KEY}; the file is incomplete.")
        if not torch.equal(state[TIED_OUTPUT_KEY], state[EMBED_KEY]):
            raise ConversionError(
                f"{source}: {TIED_OUTPUT_KEY} differs from {EMBED_KEY}; KOSMOS-G ties them, so this is not an "
                "official KOSMOS-G checkpoint (or it is damaged)."
            )
    return out
