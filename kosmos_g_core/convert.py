"""`python -m kosmos_g_core.convert`: write the pack's one-file checkpoint from the official or a Kosmos-2 checkpoint.

    python -m kosmos_g_core.convert --official checkpoint_final.pt --out models/kosmos_g/kosmos-g.safetensors \\
        [--spm sentencepiece.bpe.model --dict dict.txt] [--dtype fp16|bf16|fp32] [--keep-aligner-decoder] \\
        [--vision-heads N] [--mllm-heads N] [--aligner-heads N]
    python -m kosmos_g_core.convert --kosmos2 path/to/kosmos-2-patch14-224 --out models/kosmos_g/kosmos2_mllm.safetensors

Inside ComfyUI, where `kosmos_g_core` is not importable on its own, `python custom_nodes/<pack>/convert.py` takes the
same arguments.

Every tensor the pack keeps is checked against the model its shapes describe (`detect_config`) before anything is
written: a missing, extra or wrongly shaped tensor is an error naming the source and the keys. Head counts are in no
tensor: the MLLM's is read from the official file's training config when it has one, the others follow the official
code unless given (`resolve_heads`), and the log says which were assumed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError, save_checkpoint
from .config import KosmosGConfig, detect_config
from .dtypes import DTYPES
from .kosmos2_checkpoint import kosmos2_tokenizer_bytes, read_kosmos2_state_dict
from .model import KosmosG
from .official_checkpoint import ConversionError, map_official_state_dict, read_official_checkpoint, resolve_heads
from .tokenizer import BUNDLED_DIR, KosmosTokenizer

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "convert_kosmos2", "convert_official", "main", "validate_state_dict"]



def _describe(config: KosmosGConfig) -> str:
    v, m = config.vision, config.mllm
    text = (
        f"vision {v.layers}x{v.width} at {v.image_size}px/patch {v.patch_size}, {v.heads} heads; "
        f"MLLM {m.layers} layers x {m.dim} (FFN {m.ffn_dim}, vocab {m.vocab_size}), {m.heads} heads; "
        f"connector {config.connector.num_queries} queries, {config.connector.heads} heads; "
    )
    a = config.aligner
    if a is None:
        return text + "no AlignerNet (MLLM only)"
    n = f" + N ({a.decoder_layers} layers)" if a.with_decoder else ""
    sdxl = f", SDXL heads ({a.context_dim}-d context, {a.pooled_dim}-d pooled)" if a.is_sdxl else ""
    return (text + f"AlignerNet M {a.encoder_layers}+{a.decoder_layers} layers x {a.dim}, {a.heads} heads, "
            f"{a.num_queries} queries{sdxl}{n}")


def validate_state_dict(state: Mapping[str, torch.Tensor], source: str | Path,
                        heads: Mapping[str, int] | None = None) -> KosmosGConfig:
    """Detect the config from the shapes (with `heads`, see `detect_config`) and check the keys and shapes are exactly
    those of that model."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        config = detect_config(shapes, heads=heads)
    except KeyError as e:
        raise ConversionError(
            f"{source}: the tensor {e} is missing, so the model's size cannot be read; the file is incomplete or not a "
            "KOSMOS-G checkpoint."
        ) from None
    except ValueError as e:
        raise ConversionError(f"{source}: {e} (head counts are set with --vision-heads, --mllm-heads and "
                              "--aligner-heads)") from None
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in KosmosG(config).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors, e.g. {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors, e.g. {extra[:8]}")
    if wrong:
        problems.append("wrong shapes: " + ", ".join(f"{k} {shapes[k]} (expected {expected[k]})" for k in wrong[:8]))
    if problems:
        raise ConversionError(
            f"{source}: does not match the KOSMOS-G model its shapes describe ({_describe(config)}): "
            + "; ".join(problems)
        )
    log.info("detected config: %s", _describe(config))
    return config


def _tokenizer(spm_bytes: bytes, dict_bytes: bytes, config: KosmosGConfig, spm_name: str) -> KosmosTokenizer:
    try:
        tokenizer = KosmosTokenizer.from_bytes(spm_bytes, dict_bytes, source=spm_name)
    except (ValueError, RuntimeError, OSError) as e:  # TokenizerError is a ValueError
        raise ConversionError(f"{spm_name}: cannot build the KOSMOS-G tokenizer ({type(e).__name__}: {e})") from None
    if tokenizer.vocab_size != config.mllm.vocab_size:
        raise ConversionError(
            f"{spm_name}: the tokenizer has {tokenizer.vocab_size} ids but the model's embedding has "
            f"{config.mllm.vocab_size} rows; use KOSMOS-G's sentencepiece.bpe.model and dict.txt."
        )
    return tokenizer


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise ConversionError(f"{output}: already exists (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)


def _save(output: Path, state: Mapping[str, torch.Tensor], tokenizer: KosmosTokenizer, config: KosmosGConfig,
          dtype: torch.dtype | None, metadata: dict[str, str]) -> None:
    # save_checkpoint streams tensor by tensor (casting each on its own) and writes atomically via a rename.
    save_checkpoint(output, state, tokenizer, config=config, dtype=dtype, metadata=metadata)
    log.info("wrote %s (%.2f GB)", output, output.stat().st_size / 1e9)


def convert_official(
    source: str | Path,
    output: str | Path,
    spm_path: str | Path,
    dict_path: str | Path,
    dtype: torch.dtype | None = None,
    keep_aligner_decoder: bool = False,
    overwrite: bool = False,
    vision_heads: int | None = None,
    mllm_heads: int | None = None,
    aligner_heads: int | None = None,
) -> KosmosGConfig:
    """Official fairseq checkpoint (final or stage-2 layout) -> the pack's .safetensors file. Returns its config.

    `*_heads` give head counts the file does not hold (default: the official code's, see `resolve_heads`)."""
    source, output = Path(source), Path(output)
    _check_output(output, overwrite)
    for path, what in ((spm_path, "sentencepiece.bpe.model"), (dict_path, "dict.txt")):
        if not Path(path).is_file():
            raise ConversionError(f"{path}: no such file (expected the official KOSMOS-G {what})")
    state, found = read_official_checkpoint(source)
    mapped = map_official_state_dict(state, keep_aligner_decoder=keep_aligner_decoder, source=source)
    del state
    log.info("dropped: %s", mapped.summary())
    heads, notes = resolve_heads(source, {k: tuple(v.shape) for k, v in mapped.state_dict.items()}, found,
                                 vision=vision_heads, mllm=mllm_heads, aligner=aligner_heads)
    for note in notes:
        log.info("head count: %s", note)
    config = validate_state_dict(mapped.state_dict, source, heads)
    tokenizer = _tokenizer(Path(spm_path).read_bytes(), Path(dict_path).read_bytes(), config, str(spm_path))
    _save(output, mapped.state_dict, tokenizer, config, dtype, {"source": source.name, "converted_from": "official"})
    return config


def convert_kosmos2(
    folder: str | Path,
    output: str | Path,
    dtype: torch.dtype | None = None,
    spm_path: str | Path | None = None,
    dict_path: str | Path | None = None,
    overwrite: bool = False,
) -> KosmosGConfig:
    """Hugging Face Kosmos-2 folder -> an MLLM-only pack checkpoint (no AlignerNet; vocabulary cut to 64007)."""
    folder, output = Path(folder), Path(output)
    _check_output(output, overwrite)
    spm_bytes, dict_bytes = kosmos2_tokenizer_bytes(folder, spm_path, dict_path)
    state = read_kosmos2_state_dict(folder, dtype=dtype)
    config = validate_state_dict(state, folder)
    tokenizer = _tokenizer(spm_bytes, dict_bytes, config, str(spm_path or folder / "sentencepiece.bpe.model"))
    _save(output, state, tokenizer, config, dtype, {"source": folder.name, "converted_from": "kosmos2"})
    return config


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the KOSMOS-G pack's one-file .safetensors checkpoint (weights + config + tokenizer).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official", type=Path, metavar="CHECKPOINT",
                        help="an official KOSMOS-G fairseq checkpoint: checkpoint_final.pt or checkpoint_stage2.pt")
    source.add_argument("--kosmos2", type=Path, metavar="FOLDER",
                        help="a Hugging Face Kosmos-2 folder (model.safetensors + sentencepiece.bpe.model), "
                             "giving an MLLM-only checkpoint to train stages 2-3 from")
    parser.add_argument("-o", "--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--spm", type=Path, help="sentencepiece.bpe.model (default with --official: the official "
                                                 "one shipped with the pack; with --kosmos2: the folder's)")
    parser.add_argument("--dict", type=Path, dest="dict_path",
                        help="fairseq dict.txt (default with --official: the official one shipped with the pack; "
                             "with --kosmos2: the folder's, else rebuilt from the sentencepiece model)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep the source's)")
    parser.add_argument("--keep-aligner-decoder", action="store_true",
                        help="stage-2 files: keep AlignerNet N (aligner.decoder*), e.g. to resume stage-2 training "
                             "(default: drop it; inference and stage 3 use only AlignerNet M)")
    for name, default in (("vision", "one per 64 channels, as ViT-L-14: 16"),
                          ("mllm", "the file's training config, else one per 64 channels: 32"),
                          ("aligner", "12, fixed in the official AlignerNet")):
        parser.add_argument(f"--{name}-heads", type=int, metavar="N",
                            help=f"with --official: attention heads of the "
                                 f"{name.upper() if name == 'mllm' else name} (default: {default})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m kosmos_g_core.convert") -> int:
    """The command line; `prog` is how the usage line names the program (the pack's convert.py passes its own)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.official and bool(args.spm) != bool(args.dict_path):
        parser.error("--spm and --dict go together (the two files of one tokenizer); leave both out to use the "
                     "official tokenizer shipped with the pack")
    if args.official and not args.spm:
        args.spm, args.dict_path = BUNDLED_DIR / "sentencepiece.bpe.model", BUNDLED_DIR / "dict.txt"
    if args.kosmos2 and args.keep_aligner_decoder:
        parser.error("--keep-aligner-decoder applies to official stage-2 files; Kosmos-2 has no AlignerNet")
    if args.kosmos2 and any(h is not None for h in (args.vision_heads, args.mllm_heads, args.aligner_heads)):
        parser.error("--vision-heads, --mllm-heads and --aligner-heads apply to --official files")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    dtype = DTYPES[args.dtype] if args.dtype else None
    try:
        if args.official:
            convert_official(args.official, args.out, args.spm, args.dict_path, dtype=dtype,
                             keep_aligner_decoder=args.keep_aligner_decoder, overwrite=args.overwrite,
                             vision_heads=args.vision_heads, mllm_heads=args.mllm_heads,
                             aligner_heads=args.aligner_heads)
        else:
            convert_kosmos2(args.kosmos2, args.out, dtype=dtype, spm_path=args.spm, dict_path=args.dict_path,
                            overwrite=args.overwrite)
    except CheckpointError as e:  # includes ConversionError
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
