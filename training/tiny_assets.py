"""Everything the tiny configs (training/configs/tiny/*.toml) need, written locally in seconds:

    python -m training.tiny_assets runs/tiny-assets

writes `sd15/` (a tiny random SD1.5-like diffusers folder), `shards/<kind>/` (synthetic webdataset shards of every
kind) and `kosmos_tokenizer/` (a copy of the KOSMOS-G tokenizer files; default: the official ones shipped in
`kosmos_g_core/assets/kosmos_tokenizer/`). Then the stages chain:

    python -m training.train --config training/configs/tiny/stage1.toml
    python -m training.train --config training/configs/tiny/stage2.toml
    python -m training.train --config training/configs/tiny/stage3.toml
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from training.cli import setup_logging

from .sd15 import write_tiny_sd15

log = logging.getLogger(__name__)

SHARD_KINDS = ("text", "captions", "interleaved", "editing", "compositional")


def write_tiny_assets(out_dir: str | Path, kosmos_tokenizer: str | Path | None = None, samples: int = 16) -> Path:
    from training.data.synthetic import write_synthetic_shards

    out = Path(out_dir)
    write_tiny_sd15(out / "sd15")
    for kind in SHARD_KINDS:
        write_synthetic_shards(out / "shards" / kind, kind, samples, samples_per_shard=4)
    if kosmos_tokenizer:
        src = Path(kosmos_tokenizer)
        dst = out / "kosmos_tokenizer"
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("sentencepiece.bpe.model", "dict.txt"):
            if not (src / name).is_file():
                raise FileNotFoundError(f"{src / name} not found: --kosmos-tokenizer must be the folder with "
                                        "sentencepiece.bpe.model and dict.txt")
            shutil.copyfile(src / name, dst / name)
    return out


def main() -> None:
    from kosmos_g_core.tokenizer import BUNDLED_DIR

    parser = argparse.ArgumentParser(prog="python -m training.tiny_assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="runs/tiny-assets", help="output folder (default runs/tiny-assets)")
    parser.add_argument("--kosmos-tokenizer", default=str(BUNDLED_DIR),
                        help="folder with sentencepiece.bpe.model + dict.txt (default: the official files shipped in "
                             "kosmos_g_core/assets/kosmos_tokenizer/)")
    args = parser.parse_args()
    setup_logging()
    log.info("wrote %s", write_tiny_assets(args.out_dir, args.kosmos_tokenizer))


if __name__ == "__main__":
    main()


def write_tiny_init(path: str | Path, kosmos_tokenizer: str | Path, seed: int = 0) -> Path:
    """A random tiny-preset KOSMOS-G in the pack format (a stand-in for a Kosmos-2 conversion in smoke runs)."""
    import torch

    from kosmos_g_core.checkpoint import save_checkpoint
    from kosmos_g_core.config import KosmosGConfig
    from kosmos_g_core.model import KosmosG
    from kosmos_g_core.tokenizer import KosmosTokenizer

    folder = Path(kosmos_tokenizer)
    torch.manual_seed(seed)
    model = KosmosG(KosmosGConfig.tiny(), dtype=torch.float32)
    tokenizer = KosmosTokenizer.from_files(folder / "sentencepiece.bpe.model", folder / "dict.txt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model.state_dict(), tokenizer, config=model.config)
    return path
