"""Interleaved text-and-image prompts and their token layout, exactly as the official KOSMOS-G code builds it.

A prompt is written with ``<i>`` where an image goes: ``"<i> wearing <i>"`` with two images. The official app
(``app_model.py``, ``kosmosg_preprocess``) splits it on ``<i>`` and tokenizes every text snippet separately (so each
snippet gets SentencePiece's own word-start handling), then lays the sequence out as::

    [<s>]  + for each image: snippet tokens + [<image>] * 65 + [</image>]  + tokens of the trailing text

with no ``</s>``. The 64 ``<image>`` positions after the first one of each image are *slots*: the model writes that
image's 64 connector embeddings there (``image_mask``); the first ``<image>`` and ``</image>`` keep their token
embeddings. So every image takes 66 positions. The unconditional prompt (empty text, no image) is ``[<s>]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .image import preprocess
from .tokenizer import KosmosTokenizer

log = logging.getLogger(__name__)

PLACEHOLDER = "<i>"


class PromptError(ValueError):
    """A prompt that cannot be built or laid out: placeholders and images disagree, or it is too long."""


@dataclass(frozen=True, eq=False)
class PromptImage:
    """One image of a prompt, with an optional subject mask (H, W), 1 = subject, 0 = background painted white.

    ``image`` is anything :func:`kosmos_g_core.image.preprocess` accepts (PIL, torch tensor, numpy array).
    Compared by identity: two prompts are equal when they hold the same image objects.
    """

    image: Any
    mask: Any = None

    def pixels(self, size: int = 224) -> torch.Tensor:
        """The preprocessed image, float32 (3, size, size)."""
        return preprocess(self.image, size=size, mask=self.mask)

    def __repr__(self) -> str:
        mask = "" if self.mask is None else f", mask={_describe(self.mask)}"
        return f"PromptImage({_describe(self.image)}{mask})"


def _describe(value: Any) -> str:
    # Short, so that printing a prompt never dumps pixel values.
    if isinstance(value, Image.Image):
        return f"<PIL {value.mode} {value.width}x{value.height}>"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<{type(value).__name__} {tuple(value.shape)} {value.dtype}>"
    return f"<{type(value).__name__}>"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _as_image_list(images: Any) -> list[Any]:
    """A sequence of images from a sequence, a single image, or a ComfyUI IMAGE batch (B, H, W, C)."""
    if images is None:
        return []
    if isinstance(images, (Image.Image, PromptImage)):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        # 4-D is a batch (ComfyUI IMAGE is (B, H, W, C)); 2-D or 3-D is one image.
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _as_prompt_image(item: Any, where: str) -> PromptImage:
    if isinstance(item, PromptImage):
        return item
    if isinstance(item, (Image.Image, torch.Tensor, np.ndarray)):
        return PromptImage(item)
    raise PromptError(
        f"{where} is a {type(item).__name__}; expected text, a PromptImage, a PIL image, a tensor or an array"
    )


@dataclass(frozen=True)
class InterleavedPrompt:
    """A sequence of text segments and images. Adjacent text segments are one snippet when tokenized.

    Build it from its textual form with :meth:`from_text`, or from segments directly:
    ``InterleavedPrompt(("a photo of ", PromptImage(dog), " on the beach"))``. Raw images in ``segments`` are
    wrapped in :class:`PromptImage`. A text segment built this way is taken literally, even if it contains ``<i>``
    (an HTML italic tag in a web caption, say): only :meth:`from_text` turns placeholders into images, and the
    textual form (:attr:`text`) of such a prompt no longer round-trips.
    """

    segments: tuple[str | PromptImage, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.segments, (str, PromptImage)):
            raise PromptError("segments must be a sequence of text and images; use InterleavedPrompt.from_text(text)")
        normalized: list[str | PromptImage] = []
        for position, segment in enumerate(self.segments):
            if isinstance(segment, str):
                if segment:
                    normalized.append(segment)
            else:
                normalized.append(_as_prompt_image(segment, f"segment {position}"))
        # Frozen dataclass: normalise in place once, at construction.
        object.__setattr__(self, "segments", tuple(normalized))

    @classmethod
    def from_text(cls, text: str, images: Any = (), masks: Sequence[Any] | None = None) -> InterleavedPrompt:
        """``"<i> wearing <i>"`` with one image per ``<i>``, in order; ``masks`` (optional) parallel to ``images``.

        ``images`` may be a list of images or :class:`PromptImage`, a single image, or a ComfyUI IMAGE batch
        (B, H, W, C). Raises :class:`PromptError` when the counts disagree.
        """
        if not isinstance(text, str):
            raise PromptError(f"the prompt text must be a str, got {type(text).__name__}")
        image_list = _as_image_list(images)
        placeholders = text.count(PLACEHOLDER)
        if placeholders != len(image_list):
            raise PromptError(
                f"the prompt has {_plural(placeholders, PLACEHOLDER + ' placeholder')} but "
                f"{_plural(len(image_list), 'image')} {'was' if len(image_list) == 1 else 'were'} given; "
                f"write one {PLACEHOLDER} where each image goes"
            )
        mask_list = list(masks) if masks is not None else [None] * len(image_list)
        if len(mask_list) != len(image_list):
            raise PromptError(
                f"{_plural(len(mask_list), 'mask')} for {_plural(len(image_list), 'image')}; "
                "give one mask (or None) per image"
            )
        snippets = text.split(PLACEHOLDER)
        segments: list[str | PromptImage] = [snippets[0]]
        for number, (item, mask, snippet) in enumerate(zip(image_list, mask_list, snippets[1:], strict=True)):
            image = _as_prompt_image(item, f"image {number + 1}")
            if mask is not None:
                if image.mask is not None:
                    raise PromptError(f"image {number + 1} already has a mask; give it either in the image or masks")
                image = PromptImage(image.image, mask)
            segments += [image, snippet]
        return cls(tuple(segments))

    @property
    def images(self) -> tuple[PromptImage, ...]:
        """The images in order of occurrence."""
        return tuple(s for s in self.segments if isinstance(s, PromptImage))

    @property
    def num_images(self) -> int:
        return sum(1 for s in self.segments if isinstance(s, PromptImage))

    @property
    def text(self) -> str:
        """The textual form, ``<i>`` where each image goes."""
        return "".join(s if isinstance(s, str) else PLACEHOLDER for s in self.segments)

    def concat(self, other: InterleavedPrompt | str) -> InterleavedPrompt:
        """This prompt followed by ``other`` (text at the seam joins into one snippet)."""
        if isinstance(other, str):
            other = InterleavedPrompt.from_text(other)
        return InterleavedPrompt(self.segments + other.segments)

    def __add__(self, other: InterleavedPrompt | str) -> InterleavedPrompt:
        return self.concat(other)

    def __repr__(self) -> str:
        return f"InterleavedPrompt({self.text!r}, images={list(self.images)!r})"

    def snippets(self) -> tuple[tuple[str, ...], str]:
        """(text before each image, trailing text): the strings the official code tokenizes one by one."""
        before: list[str] = []
        pending: list[str] = []
        for segment in self.segments:
            if isinstance(segment, str):
                pending.append(segment)
            else:
                before.append("".join(pending))
                pending = []
        return tuple(before), "".join(pending)


def negative_prompt(text: str | None) -> InterleavedPrompt:
    """The negative as the official code reads it: `[<s>] + tokens(text)`, plain text with no image slot
    (kosmos-g/unilm/models/kosmosg.py:343-351), so a literal "<i>" in it is text. "" or None is the null prompt."""
    if text is not None and not isinstance(text, str):
        raise PromptError(f"the negative must be text, got {type(text).__name__}")
    return InterleavedPrompt((text or "",))


def _as_prompt(prompt: InterleavedPrompt | str) -> InterleavedPrompt:
    if isinstance(prompt, InterleavedPrompt):
        return prompt
    if isinstance(prompt, str):
        return InterleavedPrompt.from_text(prompt)
    raise PromptError(f"expected an InterleavedPrompt or a str, got {type(prompt).__name__}")


def prompt_tokens(
    prompt: InterleavedPrompt | str, tokenizer: KosmosTokenizer, image_tokens: int = 64
) -> tuple[list[int], list[bool]]:
    """Token ids and image-slot mask of one prompt in the official layout (see the module docstring).

    The mask is True exactly on the ``image_tokens`` positions after the first ``<image>`` of each image.
    A plain ``str`` must not contain ``<i>`` (there are no images to put there).
    """
    if not isinstance(image_tokens, int) or image_tokens < 1:
        raise ValueError(f"image_tokens must be a positive integer (64 for KOSMOS-G), got {image_tokens!r}")
    prompt = _as_prompt(prompt)
    before, trailing = prompt.snippets()
    ids: list[int] = [tokenizer.BOS]
    slots: list[bool] = [False]
    for snippet in before:
        text_ids = tokenizer.encode(snippet)
        ids += text_ids + [tokenizer.BOI] * (image_tokens + 1) + [tokenizer.EOI]
        slots += [False] * (len(text_ids) + 1) + [True] * image_tokens + [False]
    text_ids = tokenizer.encode(trailing)
    ids += text_ids
    slots += [False] * len(text_ids)
    return ids, slots


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, image-slot mask) per sample -> tokens (B, T) right-padded with `pad_id`, image_mask (B, T) bool.

    The one padding rule of the pack: the encoder's batches and the trainer's share it."""
    length = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    image_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (ids, slots) in enumerate(rows):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        image_mask[row, : len(slots)] = torch.tensor(slots, dtype=torch.bool)
    return tokens, image_mask


@dataclass
class PromptBatch:
    """Model input for a batch of prompts.

    tokens: (B, T) int64, right-padded with ``<pad>`` (1). image_mask: (B, T) bool, True on image slots.
    pixels: (N, 3, S, S) float, the N images of the batch ordered by sample then occurrence (N may be 0), the order
    in which the model fills the slots (row-major over ``image_mask``). image_counts: images per sample.
    """

    tokens: torch.Tensor
    image_mask: torch.Tensor
    pixels: torch.Tensor
    image_counts: tuple[int, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.pixels.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptBatch:
        """A copy on ``device``; ``dtype`` applies to ``pixels`` only (ids and mask keep theirs)."""
        return PromptBatch(
            tokens=self.tokens.to(device=device),
            image_mask=self.image_mask.to(device=device),
            pixels=self.pixels.to(device=device, dtype=dtype),
            image_counts=self.image_counts,
        )


def _check_rows(rows: Sequence[Sequence[int]], prompts: Sequence[InterleavedPrompt], max_length: int,
                image_tokens: int, what: str) -> None:
    for number, (ids, prompt) in enumerate(zip(rows, prompts, strict=True), start=1):
        if len(ids) > max_length:
            which = f"the {what}" if len(rows) == 1 else f"{what} {number} of the batch of {len(rows)}"
            raise PromptError(
                f"{which} is {len(ids)} tokens long ({_plural(prompt.num_images, 'image')} x {image_tokens + 2} "
                f"positions + text) but this KOSMOS-G model reads at most {max_length}; shorten the text or use "
                "fewer images"
            )


def check_lengths(prompts: Sequence[InterleavedPrompt | str], tokenizer: KosmosTokenizer, max_length: int,
                  image_tokens: int = 64, what: str = "prompt") -> None:
    """Refuse a prompt longer than `max_length` positions (`KosmosGConfig.max_prompt_tokens`), saying by how much
    and what to cut; `what` names the prompt in the message ("prompt", "negative text")."""
    prompt_list = [_as_prompt(p) for p in prompts]
    rows = [prompt_tokens(p, tokenizer, image_tokens)[0] for p in prompt_list]
    _check_rows(rows, prompt_list, max_length, image_tokens, what)


def collate(
    prompts: Sequence[InterleavedPrompt | str] | InterleavedPrompt | str,
    tokenizer: KosmosTokenizer,
    image_size: int = 224,
    image_tokens: int = 64,
    max_length: int | None = None,
) -> PromptBatch:
    """Tokenize and preprocess prompts into one right-padded :class:`PromptBatch`.

    Raises :class:`PromptError` when a prompt is longer than ``max_length`` tokens (as :func:`check_lengths`).
    """
    if isinstance(prompts, (InterleavedPrompt, str)):
        prompts = [prompts]
    prompt_list = [_as_prompt(p) for p in prompts]
    if not prompt_list:
        raise PromptError("no prompts given; expected at least one (the unconditional prompt is the empty string)")
    rows = [prompt_tokens(p, tokenizer, image_tokens) for p in prompt_list]
    if max_length is not None:
        _check_rows([ids for ids, _ in rows], prompt_list, max_length, image_tokens, "prompt")
    tokens, image_mask = pad_rows(rows, tokenizer.PAD)
    images = [image for p in prompt_list for image in p.images]
    if images:
        pixels = torch.stack([image.pixels(image_size) for image in images])
    else:
        pixels = torch.zeros((0, 3, image_size, image_size), dtype=torch.float32)
    return PromptBatch(tokens, image_mask, pixels, tuple(p.num_images for p in prompt_list))
