"""The KOSMOS-G tokenizer: a SentencePiece BPE model plus a fairseq dictionary (``dict.txt``).

The official code never uses SentencePiece ids directly. It splits text into SentencePiece *pieces* and looks each
piece up in a fairseq ``Dictionary``, built as fairseq builds it:

* ``Dictionary()`` starts with ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3;
* the entries of ``dict.txt`` (lines ``"<piece> <count>"``) are appended in file order: the official file lists the
  63,997 SentencePiece pieces 3..63999, so they get ids 4..64000 (fairseq id = SentencePiece id + 1);
* then ``<mask>`` and the special symbols are added: ``<mask>``=64001, ``</doc>``=64002, ``<image>``=64003,
  ``</image>``=64004, ``</chunk>``=64005, ``</line>``=64006. Vocabulary size 64007.

A piece missing from the dictionary maps to ``<unk>`` (3). Only ``sentencepiece`` is needed.

The raw bytes of both files are kept (``spm_bytes``, ``dict_bytes``) so a checkpoint can embed them and rebuild the
tokenizer with :meth:`KosmosTokenizer.from_bytes`.

The class constants (``BOI``, ``EOI``, ...) are the ids of the official files. A tokenizer built from other files
(for example a small one trained by a test) gets its own ids as instance attributes of the same names, computed the
way fairseq computes them, so ``tokenizer.BOI`` is always right for that tokenizer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

# Order matters: fairseq appends these after dict.txt (gpt_base.py adds <mask>, then SPECIAL_SYMBOLS).
_FAIRSEQ_BASE = ("<s>", "<pad>", "</s>", "<unk>")
_APPENDED_SPECIALS = ("<mask>", "</doc>", "<image>", "</image>", "</chunk>", "</line>")


# The official files ship with the core (MIT, 2.1 MB; README.md there gives their source). A pack checkpoint embeds
# its own tokenizer, so loading one never reads these; the benchmark, the tiny training assets and the tests do.
BUNDLED_DIR = Path(__file__).resolve().parent / "assets" / "kosmos_tokenizer"


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or does not belong with the other file."""


def dict_from_sentencepiece(spm_bytes: bytes) -> bytes:
    """The fairseq ``dict.txt`` that goes with a SentencePiece model, as the official release ships it.

    One line ``"<piece> 1"`` per normal piece, in SentencePiece id order, control and unknown pieces left out, no
    trailing newline. For the KOSMOS-G / Kosmos-2 model this reproduces the official ``dict.txt`` byte for byte, so a
    folder that only has ``sentencepiece.bpe.model`` (a Hugging Face Kosmos-2 folder) still gets the official ids.
    """
    processor = _load_sentencepiece(spm_bytes, "<bytes>")
    lines = [
        f"{processor.id_to_piece(i)} 1"
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i))
    ]
    return "\n".join(lines).encode("utf-8")


def _load_sentencepiece(spm_bytes: bytes, source: str) -> spm.SentencePieceProcessor:
    if not spm_bytes:
        raise TokenizerError(f"{source}: the SentencePiece model is empty (expected a sentencepiece.bpe.model file)")
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(spm_bytes)
    except (RuntimeError, OSError, TypeError) as err:
        raise TokenizerError(
            f"{source}: not a valid SentencePiece model (expected the KOSMOS-G sentencepiece.bpe.model): {err}"
        ) from err
    if processor.get_piece_size() == 0:
        raise TokenizerError(f"{source}: the SentencePiece model has no pieces")
    return processor


def _parse_dict(dict_bytes: bytes, source: str) -> list[tuple[str, bool]]:
    """Entries ``(symbol, overwrite)`` of a fairseq ``dict.txt`` in file order, parsed as
    ``Dictionary.add_from_file`` parses them (``"<piece> <count> [#fairseq:overwrite]"``)."""
    try:
        text = dict_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"{source}: dict.txt is not UTF-8 text (expected lines '<piece> <count>')") from err
    entries: list[tuple[str, bool]] = []
    seen: set[str] = set(_FAIRSEQ_BASE)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        try:
            word, field = line.rsplit(" ", 1)
            overwrite = field == "#fairseq:overwrite"
            if overwrite:
                word, field = word.rsplit(" ", 1)
            int(field)
        except ValueError as err:
            raise TokenizerError(
                f"{source}, line {number}: {raw!r} is not a fairseq dictionary entry "
                "(expected '<piece> <count>' as in the KOSMOS-G dict.txt)"
            ) from err
        if word in seen and not overwrite:
            raise TokenizerError(
                f"{source}, line {number}: duplicate symbol {word!r} (fairseq refuses it without '#fairseq:overwrite')"
            )
        seen.add(word)
        entries.append((word, overwrite))
    if not entries:
        raise TokenizerError(f"{source}: dict.txt has no entries (expected lines '<piece> <count>')")
    return entries


def _build_dictionary(entries: Sequence[tuple[str, bool]]) -> tuple[list[str], dict[str, int]]:
    """fairseq ``Dictionary``: base symbols, dict.txt entries, then ``add_symbol`` of ``<mask>`` and the specials.

    ``add_symbol`` of a symbol already present returns its id and appends nothing; an overwrite entry appends the
    symbol again and the lookup then points at the newest copy, as in fairseq.
    """
    symbols: list[str] = list(_FAIRSEQ_BASE)
    index: dict[str, int] = {s: i for i, s in enumerate(symbols)}
    for word, overwrite in entries:
        if word in index and not overwrite:
            continue
        index[word] = len(symbols)
        symbols.append(word)
    for word in _APPENDED_SPECIALS:
        if word not in index:
            index[word] = len(symbols)
            symbols.append(word)
    return symbols, index


class KosmosTokenizer:
    """SentencePiece pieces looked up in a fairseq dictionary; ids are fairseq ids (``<s>``=0, ``<pad>``=1)."""

    BOS = 0
    PAD = 1
    EOS = 2
    UNK = 3
    MASK = 64001
    DOC_END = 64002
    BOI = 64003
    EOI = 64004
    CHUNK_END = 64005
    LINE_END = 64006
    OFFICIAL_VOCAB_SIZE = 64007

    def __init__(
        self, spm_bytes: bytes, dict_bytes: bytes, *, spm_source: str = "<bytes>", dict_source: str = "<bytes>"
    ) -> None:
        """Prefer :meth:`from_files` or :meth:`from_bytes`. The sources only name the files in error messages."""
        self.spm_bytes = bytes(spm_bytes)
        self.dict_bytes = bytes(dict_bytes)
        self._sp = _load_sentencepiece(self.spm_bytes, spm_source)
        entries = _parse_dict(self.dict_bytes, dict_source)
        # A dict.txt from another model would silently map most text to <unk>: refuse the pair instead.
        for number, (piece, _) in enumerate(entries, start=1):
            if self._sp.id_to_piece(self._sp.piece_to_id(piece)) != piece:
                raise TokenizerError(
                    f"{dict_source}: entry {number} ({piece!r}) is not a piece of the SentencePiece model "
                    f"{spm_source}; the two files do not belong together (expected the dict.txt of that model)"
                )
        self._symbols, self._index = _build_dictionary(entries)
        # Instance ids shadow the official class constants; they are equal for the official files.
        self.MASK, self.DOC_END, self.BOI, self.EOI, self.CHUNK_END, self.LINE_END = (
            self._index[s] for s in _APPENDED_SPECIALS
        )
        self._special_ids = frozenset({self.BOS, self.PAD, self.EOS, *(self._index[s] for s in _APPENDED_SPECIALS)})

    @classmethod
    def from_files(cls, spm_path: str | os.PathLike, dict_path: str | os.PathLike | None = None) -> KosmosTokenizer:
        """Load ``sentencepiece.bpe.model`` and ``dict.txt``.

        Without ``dict_path`` the dictionary is derived from the model (:func:`dict_from_sentencepiece`), which gives
        the official ids for the official model.
        """
        spm_path = Path(spm_path)
        spm_bytes = _read_file(spm_path, "the KOSMOS-G SentencePiece model (sentencepiece.bpe.model)")
        if dict_path is None:
            _load_sentencepiece(spm_bytes, str(spm_path))
            return cls(
                spm_bytes,
                dict_from_sentencepiece(spm_bytes),
                spm_source=str(spm_path),
                dict_source=f"dictionary derived from {spm_path}",
            )
        dict_path = Path(dict_path)
        dict_bytes = _read_file(dict_path, "the KOSMOS-G fairseq dictionary (dict.txt)")
        return cls(spm_bytes, dict_bytes, spm_source=str(spm_path), dict_source=str(dict_path))

    @classmethod
    def bundled(cls) -> KosmosTokenizer:
        """The official KOSMOS-G tokenizer shipped with the core (``kosmos_g_core/assets/kosmos_tokenizer/``)."""
        return cls.from_files(BUNDLED_DIR / "sentencepiece.bpe.model", BUNDLED_DIR / "dict.txt")

    @classmethod
    def from_bytes(cls, spm_bytes: bytes, dict_bytes: bytes, source: str | None = None) -> KosmosTokenizer:
        """Rebuild from the raw file contents (as embedded in a checkpoint).

        ``source`` (for example the checkpoint's path) names where the bytes came from in error messages.
        """
        where = "<bytes>" if source is None else str(source)
        return cls(
            spm_bytes, dict_bytes, spm_source=f"{where} (SentencePiece model)", dict_source=f"{where} (dict.txt)"
        )

    @property
    def vocab_size(self) -> int:
        """Number of fairseq ids (64007 for the official files)."""
        return len(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)

    def __repr__(self) -> str:
        return f"KosmosTokenizer(vocab_size={self.vocab_size}, image={self.BOI}, end_image={self.EOI})"

    def index(self, symbol: str) -> int:
        """fairseq id of a piece or special symbol; ``<unk>`` (3) when it is not in the dictionary."""
        return self._index.get(symbol, self.UNK)

    def symbol(self, token_id: int) -> str:
        """The piece or special symbol of a fairseq id."""
        if not 0 <= token_id < len(self._symbols):
            raise IndexError(f"token id {token_id} is outside the vocabulary (0..{len(self._symbols) - 1})")
        return self._symbols[token_id]

    def pieces(self, text: str) -> list[str]:
        """SentencePiece pieces of ``text`` (leading ``\u2581`` for each word, spaces normalised by the model)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._sp.encode(text, out_type=str)

    def encode(self, text: str) -> list[int]:
        """fairseq ids of ``text``, without ``<s>`` or ``</s>`` (as the official ``text_transform``)."""
        return [self._index.get(piece, self.UNK) for piece in self.pieces(text)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of fairseq ids. ``<s>``, ``<pad>``, ``</s>`` are always dropped; ``<image>``, ``</image>`` and the
        other appended specials are dropped too unless ``skip_special`` is False, in which case they appear as
        their symbol text. ``<unk>`` decodes as SentencePiece's unknown marker."""
        out: list[str] = []
        run: list[str] = []
        for token_id in _as_int_list(ids):
            if token_id in (self.BOS, self.PAD, self.EOS):
                continue
            if token_id in self._special_ids:
                if not skip_special:
                    out.append(self._decode_run(run, after_text=bool(out)))
                    run = []
                    out.append(self.symbol(token_id))
                continue
            symbol = self.symbol(token_id)
            run.append(self._sp.id_to_piece(self._sp.unk_id()) if token_id == self.UNK else symbol)
        out.append(self._decode_run(run, after_text=bool(out)))
        return "".join(out)

    def _decode_run(self, pieces: list[str], after_text: bool) -> str:
        # SentencePiece drops the word-start space of the first piece; keep it when text precedes the run.
        text = self._sp.decode_pieces(pieces)
        if after_text and pieces and pieces[0].startswith("\u2581"):
            text = " " + text
        return text


def _as_int_list(ids: Iterable[int]) -> list[int]:
    # Accepts lists, tuples and 1-D tensors/arrays without importing torch here.
    tolist = getattr(ids, "tolist", None)
    values = tolist() if callable(tolist) else list(ids)
    if not isinstance(values, Sequence) or any(isinstance(v, list) for v in values):
        raise ValueError("decode expects a flat sequence of token ids")
    return [int(v) for v in values]


def _read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {what})")
    try:
        return path.read_bytes()
    except OSError as err:
        raise TokenizerError(f"{path}: cannot read {what}: {err}") from err
