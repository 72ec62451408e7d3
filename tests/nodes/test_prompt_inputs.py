"""Interleaved Prompt Builder rules, without ComfyUI: placeholders, image sockets and batches, masks, chaining,
input checks and prompt length."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def pi(pack):
    return pack("nodes.prompt_inputs")


def image(batch: int = 1, height: int = 32, width: int = 40, channels: int = 3, value: float = 0.5) -> torch.Tensor:
    return torch.full((batch, height, width, channels), value)


def slots(pi, *images, masks=None):
    masks = masks or [None] * len(images)
    return [pi.ImageSlot(f"image_{k}", img, m, f"mask_{k}") for k, (img, m) in enumerate(zip(images, masks, strict=True), start=1)]


def test_placeholders_are_filled_in_socket_order(pi):
    a, b = image(value=0.1), image(value=0.9)
    (prompt,) = pi.build_prompts("<i> wearing <i>", slots(pi, a, b))
    assert prompt.text == "<i> wearing <i>"
    first, second = prompt.images
    assert torch.equal(first.image, a[0]) and torch.equal(second.image, b[0])


def test_unconnected_sockets_are_skipped(pi):
    a = image(value=0.3)
    (prompt,) = pi.build_prompts("a photo of <i>", slots(pi, None, None, a))
    assert prompt.num_images == 1 and torch.equal(prompt.images[0].image, a[0])


def test_count_mismatch_names_both_numbers_and_the_sockets(pi):
    with pytest.raises(pi.PromptError) as e:
        pi.build_prompts("<i> wearing <i>", slots(pi, image()))
    message = str(e.value)
    assert "2 <i> placeholders" in message and "1 image was given" in message and "image_1" in message
    with pytest.raises(pi.PromptError, match=r"1 <i> placeholder but 3 images were given .*image_1 \(a batch of 3\)"):
        pi.build_prompts("a photo of <i>", slots(pi, image(batch=3)))


def test_an_image_batch_fills_several_placeholders_and_ten_images_fit(pi):
    batch = torch.rand(6, 32, 32, 3)
    text = " and ".join(["<i>"] * 10)
    (prompt,) = pi.build_prompts(text, slots(pi, batch, image(), image(batch=3)))
    assert prompt.num_images == 10
    assert torch.equal(prompt.images[5].image, batch[5])


def test_chaining_builders_puts_the_chained_prompt_first(pi):
    first = pi.build_prompts("<i> wearing", slots(pi, image(value=0.1)))
    second = pi.build_prompts("<i> in the snow", slots(pi, image(value=0.2)), chained=first)
    (prompt,) = second
    assert prompt.text == "<i> wearing <i> in the snow"
    assert [float(p.image[0, 0, 0]) for p in prompt.images] == pytest.approx([0.1, 0.2])


def test_twelve_images_through_chained_builders(pi):
    prompt = None
    for _ in range(3):
        prompt = pi.build_prompts("<i> <i> <i> <i>", slots(pi, *[image() for _ in range(4)]), chained=prompt)
    assert prompt[0].num_images == 12


def test_chaining_does_not_glue_words(pi):
    first = pi.build_prompts("a dog", [])
    (prompt,) = pi.build_prompts("on the beach", [], chained=first)
    assert prompt.text == "a dog on the beach"


def test_chaining_onto_a_batch_extends_every_prompt(pi):
    batch = pi.batch_prompts([pi.build_prompts("a cat", []), pi.build_prompts("a dog", [])])
    out = pi.build_prompts("wearing <i>", slots(pi, image()), chained=batch)
    assert [p.text for p in out] == ["a cat wearing <i>", "a dog wearing <i>"]


def test_masks_broadcast_and_resize(pi):
    imgs = image(batch=2, height=32, width=40)
    mask = torch.ones(1, 8, 10)
    (prompt,) = pi.build_prompts("<i> and <i>", slots(pi, imgs, masks=[mask]))
    assert all(p.mask.shape == (32, 40) for p in prompt.images)
    with pytest.raises(pi.PromptError, match="mask_1 is a batch of 3 masks but image_1 is a batch of 2 images"):
        pi.build_prompts("<i> and <i>", slots(pi, imgs, masks=[torch.ones(3, 32, 40)]))


def test_mask_paints_the_background_white(pi):
    from kosmos_g_core.image import to_pil_rgb

    black = torch.zeros(1, 32, 32, 3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    (prompt,) = pi.build_prompts("<i>", slots(pi, black, masks=[mask]))
    item = prompt.images[0]
    pixels = to_pil_rgb(item.image, item.mask).load()
    assert pixels[0, 0] == (255, 255, 255) and pixels[16, 16] == (0, 0, 0)


def test_a_mask_without_its_image_is_refused(pi):
    with pytest.raises(pi.PromptError, match="mask_2 is connected but image_2 is not"):
        pi.build_prompts("<i>", [pi.ImageSlot("image_1", image(), None, "mask_1"),
                                 pi.ImageSlot("image_2", None, torch.ones(1, 8, 8), "mask_2")])


def test_empty_prompt_is_refused_with_what_to_do(pi):
    with pytest.raises(pi.PromptError, match="the prompt is empty"):
        pi.build_prompts("   ", [])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_rgb_rgba_and_greyscale_are_accepted(pi, channels):
    (prompt,) = pi.build_prompts("<i>", slots(pi, image(channels=channels)))
    assert prompt.images[0].pixels(28).shape == (3, 28, 28)


def test_rgba_transparency_is_painted_white(pi):
    rgba = torch.zeros(1, 32, 32, 4)  # black and fully transparent
    (prompt,) = pi.build_prompts("<i>", slots(pi, rgba))
    from kosmos_g_core.image import to_pil_rgb

    assert to_pil_rgb(prompt.images[0].image).getpixel((5, 5)) == (255, 255, 255)


def test_tiny_and_strange_images_are_refused_by_socket_name(pi):
    with pytest.raises(pi.PromptError, match=r"image_1 is 1x1 pixels.*at least 16x16"):
        pi.build_prompts("<i>", slots(pi, image(height=1, width=1)))
    with pytest.raises(pi.PromptError, match="image_2 has 5 channels"):
        pi.build_prompts("<i> <i>", slots(pi, image(), image(channels=5)))
    with pytest.raises(pi.PromptError, match="image_1 has shape"):
        pi.build_prompts("<i>", slots(pi, torch.zeros(32, 32)))
    with pytest.raises(pi.PromptError, match="NaN"):
        pi.build_prompts("<i>", slots(pi, image(value=float("nan"))))


def test_prompt_batch_and_checks(pi):
    a, b = pi.build_prompts("a cat", []), pi.build_prompts("a dog", [])
    assert [p.text for p in pi.batch_prompts([a, None, b])] == ["a cat", "a dog"]
    with pytest.raises(pi.PromptError, match="no prompt is connected"):
        pi.batch_prompts([None, None])
    with pytest.raises(pi.PromptError, match="expected a KOSMOS_G_PROMPT"):
        pi.check_prompts("a cat")


def test_text_prompt_refuses_placeholders(pi):
    assert pi.text_prompt("")[0].text == ""
    with pytest.raises(pi.PromptError, match="KOSMOS-G Text Encode takes no images"):
        pi.text_prompt("a photo of <i>")


def test_length_check_counts_image_positions(pi, kosmos_tokenizer):
    """The builder's prompt through the core's length rule (the one the Encode node applies)."""
    from kosmos_g_core.prompt import PromptError, check_lengths, prompt_tokens

    (prompt,) = pi.build_prompts("<i> wearing <i>", slots(pi, image(), image()))
    length = len(prompt_tokens(prompt, kosmos_tokenizer)[0])
    assert length == 1 + 2 * 66 + len(kosmos_tokenizer.encode(" wearing "))
    check_lengths((prompt,), kosmos_tokenizer, max_length=length)
    with pytest.raises(PromptError, match=rf"the prompt is {length} tokens long .* reads at most {length - 1}"):
        check_lengths((prompt,), kosmos_tokenizer, max_length=length - 1)
