"""Tiny stand-ins written locally in seconds: a random SD1.5-like diffusers folder, word-level CLIP tokenizers, a
random KOSMOS-G init, and everything the tiny configs (training/configs/tiny/*.toml) need:

    python -m training.tiny_assets runs/tiny-assets
    python -m training.tiny_assets --sd15-only runs/tiny-sd15     # just the SD1.5-like folder
    python -m training.tiny_assets --sdxl runs/tiny-assets        # also sdxl/, for the tiny SDXL configs

writes `sd15/` (a tiny random SD1.5-like diffusers folder; with --sdxl also `sdxl/`, an SDXL-like one), `shards/<kind>/` (synthetic webdataset shards of every
kind) and `kosmos_tokenizer/` (a copy of the KOSMOS-G tokenizer files; default: the official ones shipped in
`kosmos_g_core/assets/kosmos_tokenizer/`). Then the stages chain:

    python -m training.train --config training/configs/tiny/stage1.toml
    python -m training.train --config training/configs/tiny/stage2.toml
    python -m training.train --config training/configs/tiny/stage3.toml

and for SDXL (after stage 1), `tiny/stage2_sdxl.toml` then `tiny/stage3_sdxl.toml`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import string
from collections.abc import Iterable
from pathlib import Path

import torch

from training.cli import setup_logging

from .sd15 import SD15_SCHEDULER, bytes_to_unicode

log = logging.getLogger(__name__)

SHARD_KINDS = ("text", "captions", "interleaved", "editing", "compositional")
TINY_WORDS = ("a", "the", "photo", "of", "dog", "cat")

# -- word-level CLIP BPE tokenizers ---------------------------------------------------------------------------------
# The folders load exactly like SD1.5's (`CLIPTokenizer.from_pretrained(folder)`): real `vocab.json` + `merges.txt`.
# Each vocabulary word gets a chain of merges that assembles it from its characters ("b e" -> "be", "be a" -> "bea",
# ..., the last char carrying CLIP's end-of-word marker "</w>"), so every listed word is one token and anything else
# falls back to single characters.
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
TOY_ALPHABET = string.ascii_lowercase + string.digits + ",.'-"


def _word_symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + END_OF_WORD]


def write_clip_tokenizer(words: Iterable[str], out_dir: str | Path, max_length: int = 77,
                         alphabet: Iterable[str] = TOY_ALPHABET, pad_token: str = EOS) -> Path:
    """Write a CLIPTokenizer folder whose vocabulary holds `words` as single tokens. Returns `out_dir`.

    `alphabet`: the single characters (each also in its end-of-word form) anything else is spelled with; characters
    outside it become the unknown token. The toy world's closed vocabulary needs only lowercase letters, digits and
    a little punctuation; the tiny SD1.5 folder takes CLIP's full byte-level alphabet. `pad_token`: what pads to
    `max_length` (CLIP's <|endoftext|>; SDXL's tokenizer_2 pads with "!", a character of the alphabet)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for ch in alphabet:
        add(ch)
        add(ch + END_OF_WORD)
    merges: list[str] = []
    seen_merges: set[str] = set()
    for word in sorted({w.lower() for w in words if w}):
        symbols = _word_symbols(word)
        current = symbols[0]
        for nxt in symbols[1:]:
            merge = f"{current} {nxt}"
            current = current + nxt
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            add(current)
    add(BOS)
    add(EOS)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=0), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}, indent=2),
        encoding="utf-8",
    )
    return out


def write_tiny_clip_tokenizer(folder: Path, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """The tiny SD1.5 folder's tokenizer: CLIP's byte-level alphabet plus whole-word tokens for `words`."""
    return write_clip_tokenizer(words, folder, alphabet=bytes_to_unicode())


# -- tiny random SD1.5-like folder (tests, smoke runs) --------------------------------------------------------------
def write_tiny_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Tiny random SD1.5-shaped diffusers folder: U-Net with cross_attention_dim 768 (the AlignerNet output size),
    a 2x-downsampling VAE with 4 latent channels, a 1-layer hidden-768 CLIP text encoder and its tokenizer."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16,
    ).save_pretrained(folder / "vae")
    DDPMScheduler.from_config(SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    tok_dir = write_tiny_clip_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((tok_dir / "vocab.json").read_text()))
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=768, intermediate_size=128, num_hidden_layers=1, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=1,
    )).save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder



# -- tiny random SDXL-like folder (tests, smoke runs; reusable for an SDXL-shaped toy base) -------------------------
SDXL_TOKENIZER_2_PAD = "!"  # SDXL's tokenizer_2 pads with "!" (id 0 in the real vocabulary), not <|endoftext|>


def write_tiny_sdxl(folder: str | Path, seed: int = 0, *, text_widths: tuple[int, int] = (768, 1280),
                    pooled_dim: int = 1280, text_layers: int = 2, block_out_channels: tuple[int, ...] = (32, 64),
                    sample_size: int = 8, words: Iterable[str] = TINY_WORDS, alphabet: Iterable[str] | None = None
                    ) -> Path:
    """Tiny random SDXL-shaped diffusers folder, the layout of stabilityai/stable-diffusion-xl-base-1.0 (loadable by
    `StableDiffusionXLPipeline.from_pretrained` and by the trainer's `load_sd15`):

    * `text_encoder/` CLIPTextModel and `text_encoder_2/` CLIPTextModelWithProjection, `text_layers` layers each
      (2 by default, so the penultimate hidden state SDXL reads is a transformer layer's output, not the
      embeddings), hidden sizes `text_widths` (SDXL's 768 + 1280 = the 2048-wide context of the `tiny_sdxl` preset)
      and a `pooled_dim` projection; `tokenizer/` and `tokenizer_2/` (`words` as whole tokens over `alphabet`,
      default CLIP's byte alphabet; "!" is always in it), tokenizer_2 padding with "!" as SDXL's does;
    * `unet/` UNet2DConditionModel with SDXL's `addition_embed_type = "text_time"` (pooled text + 6 size values, each
      through a 256-d embedding: projection_class_embeddings_input_dim = pooled_dim + 6 x 256, SDXL's 2816),
      cross-attention over the concatenated context, linear projections as SDXL;
    * `vae/` a 2x-downsampling AutoencoderKL with SDXL's scaling factor, `scheduler/` SDXL's EulerDiscreteScheduler
      config (the trainer reads its betas into DDPM), and `model_index.json`.

    The widths, depth, U-Net channels and vocabulary are arguments so a toy world can build its own SDXL-shaped base
    on the same writer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .sd15 import SDXL_TIME_IDS, SDXL_UNET, SDXL_VAE

    folder = Path(folder)
    torch.manual_seed(seed)
    time_dim = SDXL_UNET["addition_time_embed_dim"]
    blocks = len(block_out_channels)
    UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (blocks - 1),
        up_block_types=("UpBlock2D",) * (blocks - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=sum(text_widths), attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + SDXL_TIME_IDS * time_dim,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=SDXL_VAE["scaling_factor"],
    ).save_pretrained(folder / "vae")
    EulerDiscreteScheduler.from_config({**SD15_SCHEDULER, "timestep_spacing": "leading"}).save_pretrained(
        folder / "scheduler")
    chars = list(alphabet) if alphabet is not None else bytes_to_unicode()
    chars += [SDXL_TOKENIZER_2_PAD] if SDXL_TOKENIZER_2_PAD not in chars else []
    words = tuple(words)
    for sub, pad in (("tokenizer", EOS), ("tokenizer_2", SDXL_TOKENIZER_2_PAD)):
        write_clip_tokenizer(words, folder / sub, alphabet=chars, pad_token=pad)
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    for sub, cls, width, act in (("text_encoder", CLIPTextModel, text_widths[0], "quick_gelu"),
                                 ("text_encoder_2", CLIPTextModelWithProjection, text_widths[1], "gelu")):
        cls(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=width, intermediate_size=64, num_hidden_layers=text_layers,
            num_attention_heads=max(1, width // 64), max_position_embeddings=77, hidden_act=act,
            projection_dim=pooled_dim if sub == "text_encoder_2" else width, bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1, pad_token_id=1,
        )).save_pretrained(folder / sub)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return folder


def write_tiny_assets(out_dir: str | Path, kosmos_tokenizer: str | Path | None = None, samples: int = 16,
                      sdxl: bool = False) -> Path:
    from training.data.synthetic import write_synthetic_shards

    out = Path(out_dir)
    write_tiny_sd15(out / "sd15")
    if sdxl:
        write_tiny_sdxl(out / "sdxl")
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
    parser.add_argument("--sd15-only", action="store_true",
                        help="write only the tiny random SD1.5-like diffusers folder, into out_dir itself")
    parser.add_argument("--sdxl", action="store_true",
                        help="also write sdxl/, a tiny random SDXL-like diffusers folder (~90 MB; the tiny SDXL configs)")
    parser.add_argument("--sdxl-only", action="store_true",
                        help="write only the tiny random SDXL-like diffusers folder, into out_dir itself")
    parser.add_argument("--kosmos-tokenizer", default=str(BUNDLED_DIR),
                        help="folder with sentencepiece.bpe.model + dict.txt (default: the official files shipped in "
                             "kosmos_g_core/assets/kosmos_tokenizer/)")
    args = parser.parse_args()
    setup_logging()
    if args.sd15_only:
        log.info("wrote %s", write_tiny_sd15(args.out_dir))
    elif args.sdxl_only:
        log.info("wrote %s", write_tiny_sdxl(args.out_dir))
    else:
        log.info("wrote %s", write_tiny_assets(args.out_dir, args.kosmos_tokenizer, sdxl=args.sdxl))



def write_tiny_init(path: str | Path, kosmos_tokenizer: str | Path, seed: int = 0, preset: str = "tiny",
                    aligner: bool = True) -> Path:
    """A random KOSMOS-G of a tiny preset (`tiny`, or `tiny_sdxl` with SDXL's heads) in the pack format (a stand-in
    for a Kosmos-2 conversion in smoke runs). `aligner=False` leaves AlignerNet out, as a Kosmos-2 conversion or a
    stage-1 export has it: stage 2 then creates the one that fits its base."""
    from kosmos_g_core.checkpoint import save_checkpoint
    from kosmos_g_core.config import PRESETS
    from kosmos_g_core.model import KosmosG
    from kosmos_g_core.tokenizer import KosmosTokenizer

    folder = Path(kosmos_tokenizer)
    torch.manual_seed(seed)
    config = PRESETS[preset] if aligner else PRESETS[preset].without_aligner()
    model = KosmosG(config, dtype=torch.float32)
    tokenizer = KosmosTokenizer.from_files(folder / "sentencepiece.bpe.model", folder / "dict.txt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model.state_dict(), tokenizer, config=model.config)
    return path


if __name__ == "__main__":
    main()
