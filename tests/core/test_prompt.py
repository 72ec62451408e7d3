"""Interleaved prompts: the official token layout, image-slot masks, batching and errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kosmos_g_core.image import preprocess
from kosmos_g_core.prompt import (
    PLACEHOLDER,
    InterleavedPrompt,
    PromptBatch,
    PromptError,
    PromptImage,
    collate,
    prompt_tokens,
)

BOI, EOI = 64003, 64004
IMAGE = [BOI] * 65 + [EOI]


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> Image.Image:
    return Image.new("RGB", size, colour)


def slot_positions(slots: list[bool]) -> list[int]:
    return [i for i, s in enumerate(slots) if s]


def test_worked_examples_exactly(kosmos_tokenizer):
    # The four worked examples of data/README.md.
    ids, slots = prompt_tokens("a dog swimming underwater", kosmos_tokenizer)
    assert ids == [0, 10, 1133, 4569, 12888] and not any(slots)

    wearing = InterleavedPrompt.from_text("<i> wearing <i>", [solid((255, 0, 0)), solid((0, 0, 255))])
    ids, slots = prompt_tokens(wearing, kosmos_tokenizer)
    assert ids == [0] + IMAGE + [1679] + IMAGE
    assert len(ids) == 134 and sum(slots) == 128

    style = InterleavedPrompt.from_text("<i> in the style of <i>", [solid((1, 2, 3)), solid((4, 5, 6))])
    ids, slots = prompt_tokens(style, kosmos_tokenizer)
    assert ids == [0] + IMAGE + [12, 5, 1725, 9] + IMAGE
    assert len(ids) == 137 and sum(slots) == 128

    assert prompt_tokens(InterleavedPrompt.from_text(""), kosmos_tokenizer) == ([0], [False])
    assert prompt_tokens("", kosmos_tokenizer) == ([0], [False])


def test_slot_mask_is_the_64_positions_after_each_first_image_token(kosmos_tokenizer):
    prompt = InterleavedPrompt.from_text("a photo of <i> on a beach", [solid((9, 9, 9))])
    ids, slots = prompt_tokens(prompt, kosmos_tokenizer)
    text = kosmos_tokenizer.encode("a photo of ")
    trailing = kosmos_tokenizer.encode(" on a beach")
    assert ids == [0, *text, *IMAGE, *trailing]
    first = 1 + len(text)
    assert slot_positions(slots) == list(range(first + 1, first + 65))
    assert ids[first] == BOI and ids[first + 65] == EOI
    assert len(slots) == len(ids)


@pytest.mark.parametrize("count", [0, 1, 2, 12])
def test_layout_for_many_images(kosmos_tokenizer, count):
    # No limit on the number of images (the official demo stops at 10; the layout does not care).
    text = " and ".join([PLACEHOLDER] * count) + " together" if count else "nothing but text"
    images = [solid((i, i, i)) for i in range(count)]
    prompt = InterleavedPrompt.from_text(text, images)
    assert prompt.num_images == count
    ids, slots = prompt_tokens(prompt, kosmos_tokenizer)
    and_ids = kosmos_tokenizer.encode(" and ")
    tail_ids = kosmos_tokenizer.encode(" together" if count else "nothing but text")
    expected = [0]
    for i in range(count):
        expected += (and_ids if i else []) + IMAGE
    expected += tail_ids
    assert ids == expected
    assert sum(slots) == 64 * count
    starts = [i for i in range(len(ids)) if ids[i] == BOI and ids[i - 1] != BOI]
    assert len(starts) == count
    assert slot_positions(slots) == [p for s in starts for p in range(s + 1, s + 65)]


def test_custom_image_token_count(kosmos_tokenizer):
    prompt = InterleavedPrompt.from_text("<i>", [solid((0, 0, 0))])
    ids, slots = prompt_tokens(prompt, kosmos_tokenizer, image_tokens=4)
    assert ids == [0, BOI, BOI, BOI, BOI, BOI, EOI]
    assert slots == [False, False, True, True, True, True, False]
    with pytest.raises(ValueError, match="image_tokens must be a positive integer"):
        prompt_tokens(prompt, kosmos_tokenizer, image_tokens=0)


def test_literal_placeholder_text_in_segments_stays_text(kosmos_tokenizer):
    # Web captions can hold "<i>" as an HTML tag; built from segments it is text, never an image.
    prompt = InterleavedPrompt(("a <i>bold</i> claim",))
    assert prompt.num_images == 0
    assert prompt_tokens(prompt, kosmos_tokenizer)[0] == [0, *kosmos_tokenizer.encode("a <i>bold</i> claim")]


def test_each_snippet_is_tokenized_separately(kosmos_tokenizer):
    # Adjacent text segments join into one snippet; an image splits snippets.
    joined = InterleavedPrompt(("a ", "dog", " swimming"))
    assert prompt_tokens(joined, kosmos_tokenizer)[0] == [0, *kosmos_tokenizer.encode("a dog swimming")]
    image = solid((5, 5, 5))
    split = InterleavedPrompt(("a photo", image, "of a cat"))
    expected = [0, *kosmos_tokenizer.encode("a photo"), *IMAGE, *kosmos_tokenizer.encode("of a cat")]
    assert prompt_tokens(split, kosmos_tokenizer)[0] == expected


def test_placeholder_count_mismatch_names_both_numbers():
    with pytest.raises(PromptError, match="the prompt has 2 <i> placeholders but 1 image was given"):
        InterleavedPrompt.from_text("<i> wearing <i>", [solid((0, 0, 0))])
    with pytest.raises(PromptError, match="the prompt has 1 <i> placeholder but 2 images were given"):
        InterleavedPrompt.from_text("<i> on a table", [solid((0, 0, 0)), solid((1, 1, 1))])
    with pytest.raises(PromptError, match="the prompt has 1 <i> placeholder but 0 images were given"):
        InterleavedPrompt.from_text("<i> on a table")
    assert issubclass(PromptError, ValueError)


def test_other_prompt_errors():
    with pytest.raises(PromptError, match="1 mask for 2 images"):
        InterleavedPrompt.from_text("<i><i>", [solid((0, 0, 0))] * 2, masks=[None])
    with pytest.raises(PromptError, match="segment 1 is a int"):
        InterleavedPrompt(("text", 3))
    with pytest.raises(PromptError, match="use InterleavedPrompt.from_text"):
        InterleavedPrompt("plain text")  # type: ignore[arg-type]


def test_textual_form_images_and_concat():
    a, b = solid((1, 1, 1)), solid((2, 2, 2))
    prompt = InterleavedPrompt.from_text("<i> wearing <i>", [a, b])
    assert prompt.text == "<i> wearing <i>"
    assert [img.image for img in prompt.images] == [a, b]
    assert prompt.segments[1] == " wearing "
    longer = prompt.concat(" at night")
    assert longer.text == "<i> wearing <i> at night" and longer.num_images == 2
    assert (InterleavedPrompt.from_text("a photo of ") + prompt).text == "a photo of <i> wearing <i>"
    # Round trip through the textual form keeps the same images in the same places.
    again = InterleavedPrompt.from_text(longer.text, longer.images)
    assert again == longer
    assert "wearing" in repr(prompt) and "PIL RGB 12x9" in repr(prompt)


def test_images_in_every_accepted_form(kosmos_tokenizer):
    comfy_batch = torch.rand(3, 10, 14, 3)  # ComfyUI IMAGE: (B, H, W, C)
    prompt = InterleavedPrompt.from_text("<i>, <i> and <i>", comfy_batch)
    assert prompt.num_images == 3
    assert torch.equal(prompt.images[1].pixels(28), preprocess(comfy_batch[1], size=28))
    single = InterleavedPrompt.from_text("<i> alone", solid((3, 3, 3)))
    assert single.num_images == 1
    wrapped = InterleavedPrompt.from_text("<i>", [PromptImage(solid((3, 3, 3)), mask=torch.ones(9, 12))])
    assert wrapped.images[0].mask is not None


def test_masks_reach_the_pixels():
    image = solid((0, 0, 0), size=(8, 8))
    mask = torch.zeros(8, 8)
    prompt = InterleavedPrompt.from_text("<i> cut out", [image], masks=[mask])
    white = preprocess(Image.new("RGB", (8, 8), (255, 255, 255)), size=28)
    assert torch.equal(prompt.images[0].pixels(28), white)
    with pytest.raises(PromptError, match="already has a mask"):
        InterleavedPrompt.from_text("<i>", [PromptImage(image, mask)], masks=[mask])


def test_collate_pads_right_and_orders_images_by_sample_then_occurrence(kosmos_tokenizer):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    prompts = [
        InterleavedPrompt.from_text("<i> wearing <i>", [solid(colours[0]), solid(colours[1])]),
        "a dog swimming underwater",
        InterleavedPrompt.from_text("<i> in the snow", [solid(colours[2])]),
    ]
    batch = collate(prompts, kosmos_tokenizer, image_size=28)
    assert isinstance(batch, PromptBatch)
    assert batch.tokens.shape == (3, 134) and batch.tokens.dtype == torch.long
    assert batch.image_mask.shape == (3, 134) and batch.image_mask.dtype == torch.bool
    assert batch.pixels.shape == (3, 3, 28, 28) and batch.pixels.dtype == torch.float32
    assert batch.image_counts == (2, 0, 1) and batch.batch_size == 3 and batch.num_images == 3
    for row, prompt in enumerate(prompts):
        ids, slots = prompt_tokens(prompt, kosmos_tokenizer)
        assert batch.tokens[row, : len(ids)].tolist() == ids
        assert (batch.tokens[row, len(ids) :] == 1).all()
        assert batch.image_mask[row, : len(ids)].tolist() == slots
        assert not batch.image_mask[row, len(ids) :].any()
    for k, colour in enumerate(colours):
        assert torch.equal(batch.pixels[k], preprocess(solid(colour), size=28))
    # One slot per image embedding, in the row-major order the model fills them.
    assert int(batch.image_mask.sum()) == 64 * batch.num_images


def test_collate_without_images_and_single_prompt(kosmos_tokenizer):
    batch = collate(["", "a cat"], kosmos_tokenizer, image_size=32)
    assert batch.pixels.shape == (0, 3, 32, 32)
    assert batch.tokens.tolist() == [[0, 1, 1], [0, *kosmos_tokenizer.encode("a cat")]]
    assert collate("", kosmos_tokenizer).tokens.tolist() == [[0]]
    with pytest.raises(PromptError, match="no prompts given"):
        collate([], kosmos_tokenizer)


def test_collate_max_length_error_names_both_numbers(kosmos_tokenizer):
    prompt = InterleavedPrompt.from_text("<i> wearing <i>", [solid((0, 0, 0))] * 2)
    with pytest.raises(PromptError, match=r"prompt 2 of the batch of 2 is 134 tokens long \(2 images x 66 positions "
                                          r"\+ text\) but this KOSMOS-G model reads at most 100"):
        collate(["short", prompt], kosmos_tokenizer, image_size=28, max_length=100)
    assert collate([prompt], kosmos_tokenizer, image_size=28, max_length=134).tokens.shape == (1, 134)


def test_batch_to_changes_pixel_dtype_only(kosmos_tokenizer):
    prompt = InterleavedPrompt.from_text("<i>", [solid((10, 20, 30))])
    batch = collate([prompt], kosmos_tokenizer, image_size=28).to("cpu", torch.float16)
    assert batch.pixels.dtype == torch.float16
    assert batch.tokens.dtype == torch.long and batch.image_mask.dtype == torch.bool
    assert batch.image_counts == (1,)
