"""KosmosTokenizer: fairseq ids over SentencePiece pieces, checked against the official files and worked examples."""

from __future__ import annotations

import pickle
import random

import pytest
import sentencepiece as spm
import torch

from kosmos_g_core.tokenizer import KosmosTokenizer, TokenizerError, dict_from_sentencepiece


def test_worked_example_text(kosmos_tokenizer):
    # data/README.md: "a dog swimming underwater" -> [0, 10, 1133, 4569, 12888] (with <s>)
    assert [KosmosTokenizer.BOS] + kosmos_tokenizer.encode("a dog swimming underwater") == [0, 10, 1133, 4569, 12888]
    # Snippets of the worked prompt layouts, each tokenized on its own with its surrounding spaces.
    assert kosmos_tokenizer.encode(" wearing ") == [1679]
    assert kosmos_tokenizer.encode(" in the style of ") == [12, 5, 1725, 9]
    assert kosmos_tokenizer.encode("") == []
    assert kosmos_tokenizer.encode("   ") == []


def test_special_ids_and_vocab(kosmos_tokenizer):
    tok = kosmos_tokenizer
    assert tok.vocab_size == len(tok) == 64007 == KosmosTokenizer.OFFICIAL_VOCAB_SIZE
    expected = {
        0: "<s>",
        1: "<pad>",
        2: "</s>",
        3: "<unk>",
        64001: "<mask>",
        64002: "</doc>",
        64003: "<image>",
        64004: "</image>",
        64005: "</chunk>",
        64006: "</line>",
    }
    for token_id, symbol in expected.items():
        assert tok.symbol(token_id) == symbol
        assert tok.index(symbol) == token_id
    # Instance ids equal the official class constants for the official files.
    assert (tok.BOS, tok.PAD, tok.EOS, tok.UNK) == (0, 1, 2, 3)
    assert (tok.MASK, tok.DOC_END, tok.BOI, tok.EOI) == (64001, 64002, 64003, 64004)
    assert (KosmosTokenizer.BOI, KosmosTokenizer.EOI) == (64003, 64004)
    with pytest.raises(IndexError):
        tok.symbol(64007)


def test_fairseq_id_is_sentencepiece_id_plus_one(kosmos_tokenizer, tokenizer_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "sentencepiece.bpe.model"))
    for spm_id in [3, 4, 100, 12345, 63998, 63999, *random.Random(0).sample(range(3, 64000), 200)]:
        assert kosmos_tokenizer.index(sp.id_to_piece(spm_id)) == spm_id + 1
    text = "A corgi wearing sunglasses, in the style of Van Gogh's 'Starry Night'."
    assert kosmos_tokenizer.encode(text) == [i + 1 for i in sp.encode(text)]


def test_unknown_piece_maps_to_unk(kosmos_tokenizer):
    # U+13000 (an Egyptian hieroglyph) is not in the vocabulary: its piece is looked up and misses.
    ids = kosmos_tokenizer.encode("x \U00013000")
    assert ids[-1] == KosmosTokenizer.UNK
    assert kosmos_tokenizer.index("no such piece") == KosmosTokenizer.UNK


@pytest.mark.parametrize(
    "text",
    ["a dog swimming underwater", "<i> is not special to the tokenizer", "Größe 日本 😀 x", "two  spaces", ""],
)
def test_decode_round_trip(kosmos_tokenizer, text):
    ids = kosmos_tokenizer.encode(text)
    # SentencePiece normalises runs of spaces; the round trip holds on the normalised text.
    assert kosmos_tokenizer.decode(ids) == " ".join(text.split())


def test_decode_specials(kosmos_tokenizer):
    tok = kosmos_tokenizer
    ids = [tok.BOS, *tok.encode("a dog"), tok.BOI, tok.BOI, tok.EOI, *tok.encode("swimming"), tok.PAD, tok.PAD]
    assert tok.decode(ids) == "a dog swimming"
    assert tok.decode(ids, skip_special=False) == "a dog<image><image></image> swimming"
    assert tok.decode(torch.tensor(ids)) == "a dog swimming"


def test_from_bytes_equals_from_files(kosmos_tokenizer, tokenizer_dir):
    spm_bytes = (tokenizer_dir / "sentencepiece.bpe.model").read_bytes()
    dict_bytes = (tokenizer_dir / "dict.txt").read_bytes()
    assert kosmos_tokenizer.spm_bytes == spm_bytes
    assert kosmos_tokenizer.dict_bytes == dict_bytes
    rebuilt = KosmosTokenizer.from_bytes(kosmos_tokenizer.spm_bytes, kosmos_tokenizer.dict_bytes)
    assert rebuilt.vocab_size == kosmos_tokenizer.vocab_size
    assert [rebuilt.symbol(i) for i in range(rebuilt.vocab_size)] == [
        kosmos_tokenizer.symbol(i) for i in range(kosmos_tokenizer.vocab_size)
    ]
    text = "a photo of a cat on a skateboard"
    assert rebuilt.encode(text) == kosmos_tokenizer.encode(text)


def test_dict_derived_from_sentencepiece_is_the_official_file(kosmos_tokenizer, tokenizer_dir):
    # A Hugging Face Kosmos-2 folder has no dict.txt: deriving it must give the official file byte for byte.
    assert dict_from_sentencepiece(kosmos_tokenizer.spm_bytes) == (tokenizer_dir / "dict.txt").read_bytes()
    derived = KosmosTokenizer.from_files(tokenizer_dir / "sentencepiece.bpe.model")
    assert derived.dict_bytes == kosmos_tokenizer.dict_bytes
    assert derived.encode("a dog swimming underwater") == [10, 1133, 4569, 12888]


def test_missing_files_name_the_path(tmp_path, tokenizer_dir):
    missing = tmp_path / "nowhere.model"
    with pytest.raises(FileNotFoundError, match="nowhere.model.*SentencePiece model"):
        KosmosTokenizer.from_files(missing, tokenizer_dir / "dict.txt")
    with pytest.raises(FileNotFoundError, match="dict.txt.*fairseq dictionary"):
        KosmosTokenizer.from_files(tokenizer_dir / "sentencepiece.bpe.model", tmp_path / "dict.txt")


def test_corrupt_sentencepiece_model(tmp_path, tokenizer_dir):
    bad = tmp_path / "sentencepiece.bpe.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match=r"sentencepiece\.bpe\.model: not a valid SentencePiece model"):
        KosmosTokenizer.from_files(bad, tokenizer_dir / "dict.txt")
    bad.write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty"):
        KosmosTokenizer.from_files(bad, tokenizer_dir / "dict.txt")


def test_corrupt_dictionary(tmp_path, tokenizer_dir):
    spm_path = tokenizer_dir / "sentencepiece.bpe.model"
    bad = tmp_path / "dict.txt"
    bad.write_text("▁the 1\n▁dog\n")
    with pytest.raises(TokenizerError, match=r"dict\.txt, line 2.*expected '<piece> <count>'"):
        KosmosTokenizer.from_files(spm_path, bad)
    bad.write_text("▁the 1\n▁the 1\n")
    with pytest.raises(TokenizerError, match="line 2: duplicate symbol"):
        KosmosTokenizer.from_files(spm_path, bad)
    bad.write_text("")
    with pytest.raises(TokenizerError, match="no entries"):
        KosmosTokenizer.from_files(spm_path, bad)
    bad.write_bytes(b"\xff\xfe 1")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        KosmosTokenizer.from_files(spm_path, bad)
    bad.write_text("▁the 1\nzzzz_not_a_piece 1\n")
    with pytest.raises(TokenizerError, match="do not belong together"):
        KosmosTokenizer.from_files(spm_path, bad)


@pytest.fixture(scope="module")
def small_spm(tmp_path_factory):
    """A tiny BPE model trained here, to check the fairseq id rules on a dictionary of another size."""
    folder = tmp_path_factory.mktemp("small_spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(["a dog swimming underwater", "a cat wearing a hat", "in the style of a painting"] * 30)
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "small"), vocab_size=60, model_type="bpe", minloglevel=2
    )
    return folder / "small.model"


def test_fairseq_rules_on_another_dictionary(small_spm):
    tok = KosmosTokenizer.from_files(small_spm)
    sp = spm.SentencePieceProcessor(model_file=str(small_spm))
    entries = len(tok.dict_bytes.decode().splitlines())
    assert entries == sp.get_piece_size() - 3
    # <s> <pad> </s> <unk>, the dict.txt entries, then <mask> and the specials, as fairseq appends them.
    assert tok.MASK == 4 + entries
    assert (tok.BOI, tok.EOI, tok.LINE_END) == (entries + 6, entries + 7, entries + 9)
    assert tok.vocab_size == entries + 10
    assert tok.encode("a dog") == [i + 1 for i in sp.encode("a dog")]


def test_dictionary_overwrite_flag(small_spm):
    # fairseq: a "#fairseq:overwrite" entry appends the symbol again and lookups use the newest copy.
    spm_bytes = small_spm.read_bytes()
    lines = dict_from_sentencepiece(spm_bytes).decode().splitlines()
    first_piece = lines[0].rsplit(" ", 1)[0]
    tok = KosmosTokenizer.from_bytes(spm_bytes, "\n".join([*lines, f"{first_piece} 1 #fairseq:overwrite"]).encode())
    assert tok.index(first_piece) == 4 + len(lines)
    assert tok.MASK == 5 + len(lines)


def test_pickles_for_data_loader_workers(kosmos_tokenizer):
    clone = pickle.loads(pickle.dumps(kosmos_tokenizer))
    assert clone.encode("a dog swimming underwater") == [10, 1133, 4569, 12888]
    assert clone.BOI == 64003 and clone.spm_bytes == kosmos_tokenizer.spm_bytes


def test_from_bytes_errors_name_the_source(kosmos_tokenizer):
    with pytest.raises(TokenizerError, match=r"model\.safetensors \(SentencePiece model\): not a valid"):
        KosmosTokenizer.from_bytes(b"junk", kosmos_tokenizer.dict_bytes, source="model.safetensors")
    with pytest.raises(TokenizerError, match=r"model\.safetensors \(dict\.txt\), line 1"):
        KosmosTokenizer.from_bytes(kosmos_tokenizer.spm_bytes, b"nonsense", source="model.safetensors")


def test_bundled_tokenizer_is_the_official_one(kosmos_tokenizer):
    """KosmosTokenizer.bundled() (the files shipped in kosmos_g_core/assets/) gives the official ids."""
    tok = KosmosTokenizer.bundled()
    assert len(tok) == 64007 and tok.spm_bytes == kosmos_tokenizer.spm_bytes
    assert tok.encode("a dog swimming underwater") == [10, 1133, 4569, 12888]
