"""Decoding the members of a raw webdataset sample. Every failure raises :class:`SampleError`, which the loader
counts as a skipped sample (a corrupt image, a missing member or bad JSON never stops training)."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from PIL import Image

from kosmos_g_core.prompt import PLACEHOLDER

# Member suffixes accepted for "the image" of a sample, in order of preference.
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


class SampleError(ValueError):
    """A sample that cannot be used. ``reason`` is the stats counter it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def member(members: dict[str, bytes], suffix: str, key: str) -> bytes:
    """The bytes of ``{key}.{suffix}``; SampleError("skipped_corrupt") when it is absent."""
    data = members.get(suffix)
    if data is None:
        raise SampleError("skipped_corrupt", f"sample {key!r} has no member .{suffix} (has {sorted(members)})")
    return data


def image_member(members: dict[str, bytes], key: str, stem: str = "") -> bytes:
    """Bytes of the sample's image ``{stem}jpg`` (or .jpeg/.png/.webp)."""
    for suffix in IMAGE_SUFFIXES:
        if stem + suffix in members:
            return members[stem + suffix]
    raise SampleError("skipped_corrupt", f"sample {key!r} has no image member {stem}jpg (has {sorted(members)})")


def decode_image(data: bytes, key: str, what: str, mode: str = "RGB") -> Image.Image:
    """A fully loaded PIL image in ``mode`` (RGB images composite transparency on white, as the core does)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        if mode == "RGB" and image.mode in ("RGBA", "LA", "PA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert(mode)
    except Exception as err:  # PIL raises many types for broken files; all mean "skip this sample"
        raise SampleError("skipped_corrupt", f"sample {key!r}: {what} is not a readable image: {err}") from err


def decode_text(data: bytes, key: str, what: str) -> str:
    """UTF-8 text, stripped; the ``<i>`` placeholder (HTML italics in web captions) is removed so it cannot be
    mistaken for an image slot."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SampleError("skipped_corrupt", f"sample {key!r}: {what} is not UTF-8 text") from err
    return clean_text(text)


def clean_text(text: str) -> str:
    return text.replace(PLACEHOLDER, "").strip()


def decode_json(data: bytes, key: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SampleError("skipped_corrupt", f"sample {key!r}: {what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise SampleError("skipped_corrupt", f"sample {key!r}: {what} must hold a JSON object, got {type(value)}")
    return value


def json_str(obj: dict[str, Any], field: str, key: str, what: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str):
        raise SampleError("skipped_corrupt", f"sample {key!r}: {what} has no string field {field!r}")
    return clean_text(value)
