"""A word-level CLIP BPE tokenizer for the toy world's closed vocabulary.

The toy base model must load exactly like SD1.5 (`CLIPTokenizer.from_pretrained(folder/"tokenizer")`), so we write
real `vocab.json` + `merges.txt` files. Each vocabulary word gets a chain of merges that assembles it from its
characters ("b e" -> "be", "be a" -> "bea", ..., last char carries the CLIP end-of-word marker "</w>"), so every toy
word is one token and anything else falls back to single characters.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"


def _word_symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + END_OF_WORD]


def write_clip_tokenizer(words: Iterable[str], out_dir: str | Path, max_length: int = 77) -> Path:
    """Write a CLIPTokenizer folder whose vocabulary holds `words` as single tokens. Returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for ch in string.ascii_lowercase + string.digits + ",.'-":
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
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2),
        encoding="utf-8",
    )
    return out
