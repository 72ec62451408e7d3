"""Cache files of the frozen SD1.5 outputs that stages 2 and 3 would otherwise recompute at every step.

Only what no per-step random choice touches is cached:

* stage 2, kind ``clip_text``: the frozen CLIP text encoder's last hidden state of a caption, (77, 768). It is a
  function of the caption text alone (77 padded CLIP ids, no dropout in eval mode). Against an SDXL base, kind
  ``sdxl_text``: SDXL's context (77, 2048) and pooled vector (1280,) of the caption (``clip_target``,
  ``clip_pooled``), from both text encoders. The frozen MLLM is *not*
  cached: it keeps its train-mode dropout, as the official run did, so its hidden states differ at every step.
* stage 3, kind ``vae_posterior``: the frozen VAE's posterior N(mean, std²) of the target image, mean and std each
  (4, R/8, R/8). The target transform (short side to R, bilinear, centre crop, [-1, 1]) has no random part, so the
  posterior is a function of the target image's bytes and R. The trainer still draws ``mean + std · eps`` at every
  step, the same draw as ``latent_dist.sample()`` (`training.sd15.sample_posterior`), so the latents stay random
  per step exactly as without the cache (caching one sampled latent, as some trainers do, would freeze eps).

Entity-word drop, crop vs cut-out and input-caption drop (per-sample RNG in the loader), the null-condition draws,
noise, timesteps and the MLLM's dropout (per step, in the trainer) are untouched: the loader builds every sample
exactly as without a cache and only adds the cached tensors to it.

Files: one safetensors file per shard and kind, in a hidden folder beside the shard (so no shard pattern, glob or
folder expansion ever picks it up): ``data/laion/000123.tar`` -> ``data/laion/.frozen_cache/000123.clip_text.safetensors``.
Entries are keyed by the sha256 of what the frozen model reads (the caption text; the target image's bytes), so a
sample that changed after the cache was built has no entry and is refused, never served a stale output. The header
metadata holds the :class:`CacheIdentity` (frozen weights' hash, tokenizer, input transform, resolution, dtype,
precision); a file whose identity differs from the run's is refused with the fields that differ. The files are
written by ``python -m training.build_cache`` and read with ``[sd15] cache_outputs = true`` (docs/training.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = "kosmos_g_frozen_cache"
VERSION = "1"
CACHE_DIR = ".frozen_cache"

# What each stage caches, and the batch keys (= tensor names in the files) the loader adds for it. Stage 2 against
# an SDXL base caches kind `sdxl_text` instead (cache_kind): both text encoders' context and the pooled vector, in
# files of their own name, so the SD1.5 and the SDXL caches of the same caption shards live side by side.
STAGE_KIND = {"stage2": "clip_text", "stage3": "vae_posterior"}
SDXL_STAGE_KIND = {"stage2": "sdxl_text", "stage3": "vae_posterior"}
ENTRY_NAMES = {"clip_text": ("clip_target",), "sdxl_text": ("clip_target", "clip_pooled"),
               "vae_posterior": ("latent_mean", "latent_std")}

BUILD_COMMAND = "python -m training.build_cache --config <the run's config and overrides>"


class FrozenCacheError(RuntimeError):
    """A cache file is missing, stale or built for another model / resolution / dtype: names the file and why."""


@dataclass(frozen=True)
class CacheIdentity:
    """What the cached outputs depend on besides the sample; stored in every file's header and compared with the
    run's before a file is used."""

    kind: str          # clip_text | sdxl_text | vae_posterior
    weights: str       # sha256 of the frozen module's tensors (names, shapes, values): see weights_digest
    tokenizer: str     # clip_text: sha256 of the CLIP tokenizer (vocabulary, merges, padding); vae_posterior: ""
    transform: str     # how the input is prepared (CLIP ids rule; target resize / crop / normalisation)
    resolution: int    # vae_posterior: target side R; clip_text: 0
    dtype: str         # the frozen part's weights dtype ([sd15] dtype, resolved)
    precision: str     # [parallel] precision: the autocast the outputs are computed under
    model: str = ""    # the [sd15] path it was built from: named in messages, not compared (the weights hash is)

    def to_metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "version": VERSION, **{k: str(v) for k, v in asdict(self).items()}}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None, path: str | Path) -> CacheIdentity:
        meta = meta or {}
        if meta.get("format") != FORMAT:
            raise FrozenCacheError(f"{path} is not a frozen-output cache file (no {FORMAT!r} header); rebuild it "
                                   f"with {BUILD_COMMAND}")
        if meta.get("version") != VERSION:
            raise FrozenCacheError(f"{path} is a version {meta.get('version')} cache file, this trainer reads version "
                                   f"{VERSION}: rebuild it with {BUILD_COMMAND}")
        try:
            return cls(**{f.name: int(meta[f.name]) if f.name == "resolution" else meta[f.name] for f in fields(cls)})
        except (KeyError, ValueError) as err:
            raise FrozenCacheError(f"{path}: damaged cache header ({err}); rebuild it with {BUILD_COMMAND}") from err

    def differences(self, run: CacheIdentity) -> list[str]:
        """'field: cache X, this run Y' for every compared field that differs (empty = the file is usable)."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(run, f.name)
            if f.name != "model" and mine != theirs:
                out.append(f"{f.name}: cache {_short(mine)}, this run {_short(theirs)}")
        return out


def _short(value: object) -> str:
    text = str(value)
    return text[:16] + "..." if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else repr(value)


def cache_kind(stage: str, sdxl: bool = False) -> str:
    """The kind of cache `stage` reads: STAGE_KIND, or SDXL_STAGE_KIND when the frozen base is SDXL."""
    kinds = SDXL_STAGE_KIND if sdxl else STAGE_KIND
    if stage not in kinds:
        raise ValueError(f"stage = {stage!r}: only {sorted(kinds)} have frozen outputs to cache")
    return kinds[stage]


# -- identities ------------------------------------------------------------------------------------------------------
def weights_digest(module: nn.Module) -> str:
    """sha256 over the module's state dict in name order: each tensor's name, shape and float32 values. Two loads of
    the same weights in the same dtype agree whatever the file layout (diffusers folder or single file)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no bytes copy
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides the CLIP ids: the tokenizer's model (vocabulary, merges, normaliser, special tokens;
    the backend's transient truncation / padding state left out) and its padding token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:  # a Python tokenizer: its vocabulary stands for it
        spec = {"vocab": tokenizer.get_vocab()}
    spec["pad"] = [tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def content_key(data: bytes | str) -> str:
    """The key of a cache entry: sha256 of what the frozen model reads (caption text as UTF-8, or image bytes)."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


# -- files -----------------------------------------------------------------------------------------------------------
def cache_path(shard: str | Path, kind: str) -> Path:
    """`<dir>/000123.tar` -> `<dir>/.frozen_cache/000123.<kind>.safetensors`."""
    shard = Path(shard)
    stem = shard.name[: -len(".tar")] if shard.name.endswith(".tar") else shard.name
    return shard.parent / CACHE_DIR / f"{stem}.{kind}.safetensors"


def read_identity(path: str | Path) -> CacheIdentity:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return CacheIdentity.from_metadata(f.metadata(), path)


def write_cache_file(path: str | Path, identity: CacheIdentity, entries: Mapping[str, Mapping[str, torch.Tensor]]) -> Path:
    """Write `{content key: {name: tensor}}` as `<key>.<name>` tensors; via a temporary file, so an interrupted build
    never leaves a truncated file under the final name."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{key}.{name}": t.detach().to("cpu").contiguous().clone()
               for key, outputs in entries.items() for name, t in outputs.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=identity.to_metadata())
    os.replace(tmp, path)
    return path


class FrozenCache:
    """The cache a run reads: the identity its files must carry, and the per-sample lookup the data workers do.

    Picklable (the open files are not carried: each worker opens its own, lazily, and keeps a few open)."""

    MAX_OPEN = 8

    def __init__(self, identity: CacheIdentity):
        self.identity = identity
        self._files: OrderedDict[str, tuple[object, set[str]]] = OrderedDict()

    @property
    def kind(self) -> str:
        return self.identity.kind

    def __getstate__(self) -> dict:
        return {"identity": self.identity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["identity"])

    def _check_file(self, path: Path, shard: str) -> None:
        if not path.is_file():
            raise FrozenCacheError(f"{path} not found: shard {shard} has no {self.kind} cache file; build the cache "
                                   f"with {BUILD_COMMAND}, or set [sd15] cache_outputs = false")
        built = read_identity(path)
        diffs = built.differences(self.identity)
        if diffs:
            raise FrozenCacheError(f"{path} was built for another setup ({'; '.join(diffs)}; built from {built.model!r}, this "
                                   f"run uses {self.identity.model!r}): rebuild it with {BUILD_COMMAND} --overwrite, "
                                   "or set [sd15] cache_outputs = false")

    def check(self, shards: Iterable[str]) -> int:
        """At start-up: every shard has its cache file and every file was built for this run's setup. Returns the
        number of files checked."""
        shards = list(shards)
        missing = [s for s in shards if not cache_path(s, self.kind).is_file()]
        if missing:
            raise FrozenCacheError(f"{len(missing)} of {len(shards)} shards have no {self.kind} cache file (first: "
                                   f"{cache_path(missing[0], self.kind)}); build the cache with {BUILD_COMMAND}, or "
                                   "set [sd15] cache_outputs = false")
        for shard in shards:
            self._check_file(cache_path(shard, self.kind), shard)
        return len(shards)

    def _open(self, shard: str) -> tuple[object, set[str]]:
        from safetensors import safe_open

        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        path = cache_path(shard, self.kind)
        self._check_file(path, shard)  # a file replaced after start-up is checked again
        handle = safe_open(str(path), framework="pt")
        self._files[shard] = (handle, set(handle.keys()))
        while len(self._files) > self.MAX_OPEN:
            self._files.popitem(last=False)
        return self._files[shard]

    def lookup(self, shard: str, key: str, sample: str) -> dict[str, torch.Tensor]:
        """The cached outputs of one sample: {batch key: tensor} (clip_target (77, 768), SDXL: (77, 2048) and
        clip_pooled (1280,); latent_mean and latent_std (4, R/8, R/8)), in the dtype they were computed in."""
        handle, names = self._open(shard)
        wanted = {name: f"{key}.{name}" for name in ENTRY_NAMES[self.kind]}
        if not all(n in names for n in wanted.values()):
            raise FrozenCacheError(f"{cache_path(shard, self.kind)} has no entry for sample {sample!r} of {shard} "
                                   f"(content sha256 {key[:16]}...): the shard changed after its cache was built; "
                                   f"rebuild it with {BUILD_COMMAND} --overwrite")
        return {name: handle.get_tensor(tensor) for name, tensor in wanted.items()}
