"""What the prompt nodes do with their inputs, as plain functions (no ComfyUI import), so CI tests them.

A `KOSMOS_G_PROMPT` value is a tuple of `InterleavedPrompt`s: one per sample of a batch (almost always one).

Rules of the Interleaved Prompt Builder, in the order a user meets them:

* `text` holds `<i>` where each image goes. The connected `image_1`, `image_2`, ... inputs fill the placeholders
  in input order; an IMAGE input holding a batch of N images fills N placeholders (so 10+ images fit through
  one socket, or by chaining builders).
* `mask_k` (optional) belongs to `image_k`: 1 = subject, 0 = background, which is painted white (the form the
  model was trained on). A mask batch of 1 applies to every image of its batch; masks are resized to their image.
* `prompt` (optional) is an earlier builder's output; it comes first, this builder's text and images follow it.
  If it is a batch of B prompts, the new part is appended to each of them.
* Images are checked here (4-D, 1..4 channels, at least MIN_IMAGE_SIDE pixels per side) so a wrong input is
  named by its socket, not by a tensor shape deep in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kosmos_g_core.prompt import PLACEHOLDER, InterleavedPrompt, PromptError, PromptImage

# The vision tower resizes every image to 224x224; below this a "reference image" carries no subject to speak of
# (a 1x1 image is almost always a wiring mistake, e.g. an empty mask turned into an image).
MIN_IMAGE_SIDE = 16
MAX_IMAGE_INPUTS = 4

Prompts = tuple[InterleavedPrompt, ...]


@dataclass(frozen=True)
class ImageSlot:
    """One optional image socket of the builder and its optional mask socket (either may be None)."""

    name: str  # "image_1"
    image: torch.Tensor | None  # ComfyUI IMAGE (B, H, W, C), float 0..1
    mask: torch.Tensor | None = None  # ComfyUI MASK (B, H, W) or (H, W), float 0..1
    mask_name: str = ""  # "mask_1"


def split_images(name: str, image: torch.Tensor) -> list[torch.Tensor]:
    """A ComfyUI IMAGE batch (B, H, W, C) -> B images (H, W, C), refusing what the model cannot read."""
    if not isinstance(image, torch.Tensor):
        raise PromptError(f"{name} is a {type(image).__name__}, expected an IMAGE (a tensor of shape (B, H, W, C))")
    if image.ndim == 3:
        # A single (H, W, C) image from a hand-written node: treat it as a batch of one.
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise PromptError(f"{name} has shape {tuple(image.shape)}; expected an IMAGE batch of shape (B, H, W, C)")
    batch, height, width, channels = image.shape
    if batch == 0:
        raise PromptError(f"{name} is an empty batch (0 images); connect at least one image or disconnect it")
    if channels not in (1, 2, 3, 4):
        raise PromptError(
            f"{name} has {channels} channels (shape {tuple(image.shape)}); expected 3 (RGB), 4 (RGBA: transparency is "
            "painted white), or 1 (greyscale)"
        )
    if min(height, width) < MIN_IMAGE_SIDE:
        raise PromptError(
            f"{name} is {width}x{height} pixels; KOSMOS-G needs reference images at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (they are resized to 224x224). Connect the real picture of the subject"
        )
    if not torch.isfinite(image).all():
        raise PromptError(f"{name} contains NaN or infinite values")
    return list(image.float().cpu().unbind(0))


def split_masks(name: str, mask: torch.Tensor | None, images: Sequence[torch.Tensor], image_name: str) -> list:
    """Masks for `images` (each (H, W, C)): one per image, a batch of one broadcast, each resized to its image."""
    if mask is None:
        return [None] * len(images)
    if not isinstance(mask, torch.Tensor):
        raise PromptError(f"{name} is a {type(mask).__name__}, expected a MASK (a tensor of shape (B, H, W))")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise PromptError(f"{name} has shape {tuple(mask.shape)}; expected a MASK batch of shape (B, H, W)")
    if mask.shape[0] not in (1, len(images)):
        raise PromptError(
            f"{name} is a batch of {mask.shape[0]} masks but {image_name} is a batch of {len(images)} images; "
            "give one mask per image, or a single mask for all of them"
        )
    masks = list(mask.float().cpu().unbind(0))
    if len(masks) == 1:
        masks = masks * len(images)
    return [_fit_mask(m, img.shape[0], img.shape[1]) for m, img in zip(masks, images, strict=True)]


def _fit_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Masks from segmentation nodes often come at another resolution; bilinear keeps soft edges soft.
    if tuple(mask.shape) == (height, width):
        return mask.clamp(0.0, 1.0)
    resized = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].clamp(0.0, 1.0)


def _describe_connected(counts: Sequence[tuple[str, int]]) -> str:
    if not counts:
        return "no image input is connected"
    parts = [name if n == 1 else f"{name} (a batch of {n})" for name, n in counts]
    return "connected: " + ", ".join(parts)


def build_prompts(text: str, slots: Sequence[ImageSlot], chained: Prompts | None = None) -> Prompts:
    """The Interleaved Prompt Builder: text with `<i>` + image sockets (+ an earlier prompt) -> prompts."""
    if not isinstance(text, str):
        raise PromptError(f"text must be a string, got {type(text).__name__}")
    chained = check_prompts(chained) if chained is not None else None
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    counts: list[tuple[str, int]] = []
    for slot in slots:
        if slot.image is None:
            if slot.mask is not None:
                raise PromptError(f"{slot.mask_name} is connected but {slot.name} is not; a mask belongs to its image")
            continue
        split = split_images(slot.name, slot.image)
        images += split
        masks += split_masks(slot.mask_name or f"mask of {slot.name}", slot.mask, split, slot.name)
        counts.append((slot.name, len(split)))

    placeholders = text.count(PLACEHOLDER)
    if placeholders != len(images):
        noun = "placeholder" if placeholders == 1 else "placeholders"
        raise PromptError(
            f"the text has {placeholders} {PLACEHOLDER} {noun} but {len(images)} "
            f"{'image was' if len(images) == 1 else 'images were'} given ({_describe_connected(counts)}). "
            f"Write one {PLACEHOLDER} where each image goes, e.g. '{PLACEHOLDER} wearing {PLACEHOLDER}' for two images"
        )
    if not text.strip() and not images and not chained:
        raise PromptError(
            "the prompt is empty: type a text, with <i> where each image goes. (For the unconditional embedding, use "
            "the 'negative' output of KOSMOS-G Encode, or KOSMOS-G Text Encode with an empty text.)"
        )
    part = InterleavedPrompt.from_text(text, [PromptImage(img) for img in images], masks)
    if not chained:
        return (part,)
    return tuple(_concat(earlier, part) for earlier in chained)


def _concat(earlier: InterleavedPrompt, part: InterleavedPrompt) -> InterleavedPrompt:
    """`earlier` then `part`, joined like two pieces of a sentence: a space goes between them unless the seam already
    has one ("<i> wearing" + "<i> in the snow" -> "<i> wearing <i> in the snow", as if typed in one builder)."""
    if not earlier.segments or not part.segments:
        return InterleavedPrompt(earlier.segments + part.segments)
    left, right = earlier.segments[-1], part.segments[0]
    spaced = (isinstance(left, str) and left[-1].isspace()) or (isinstance(right, str) and right[0].isspace())
    return InterleavedPrompt(earlier.segments + (() if spaced else (" ",)) + part.segments)


def batch_prompts(groups: Sequence[Prompts | None]) -> Prompts:
    """The Prompt Batch node: several prompts (each maybe already a batch) -> one batch, in input order."""
    out = [p for group in groups if group is not None for p in check_prompts(group)]
    if not out:
        raise PromptError("no prompt is connected; connect at least prompt_1")
    return tuple(out)


def check_prompts(prompts: object) -> Prompts:
    """A KOSMOS_G_PROMPT input, verified (a wrongly wired custom node would otherwise fail deep in the model)."""
    if isinstance(prompts, InterleavedPrompt):
        return (prompts,)
    if not isinstance(prompts, tuple) or not prompts or not all(isinstance(p, InterleavedPrompt) for p in prompts):
        raise PromptError(
            f"expected a KOSMOS_G_PROMPT (from Interleaved Prompt Builder), got {type(prompts).__name__}"
        )
    return prompts


def text_prompt(text: str) -> Prompts:
    """KOSMOS-G Text Encode: plain text, refusing `<i>` (there is no image to put there). "" is the null prompt."""
    if not isinstance(text, str):
        raise PromptError(f"text must be a string, got {type(text).__name__}")
    count = text.count(PLACEHOLDER)
    if count:
        raise PromptError(
            f"the text has {count} {PLACEHOLDER} placeholder{'s' if count > 1 else ''} but KOSMOS-G Text Encode takes "
            "no images; use Interleaved Prompt Builder + KOSMOS-G Encode for prompts with images"
        )
    return (InterleavedPrompt.from_text(text),)
