"""Captioning images with a local transformers image-to-text model (BLIP, BLIP-2, GIT, InstructBLIP ...), or
reading captions the user already has from a JSONL file."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .local_models import model_dtype, move_inputs, require_model_folder

log = logging.getLogger(__name__)

_EXPECTED = (
    "an image-to-text model such as Salesforce/blip2-opt-2.7b (the official choice) or "
    "Salesforce/blip-image-captioning-large"
)


def clean_caption(text: str) -> str:
    """One line of text (the shards store captions in JSON, but tabs/newlines confuse every downstream tool)."""
    return " ".join(text.replace("\t", " ").replace("\n", " ").split())


class ImageCaptioner:
    """``captioner(images) -> captions`` with greedy decoding, so a rebuild gives the same captions."""

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 30) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = require_model_folder(path, "--captioner", _EXPECTED)
        self.device = device
        self.dtype = model_dtype(device)
        self.max_new_tokens = max_new_tokens
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        self.model.to(device).eval()
        log.info("captioner %s (%s) on %s", folder, type(self.model).__name__, device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt")
        inputs = move_inputs(dict(inputs), self.device, self.dtype)
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and generated.shape[1] > prompt_ids.shape[1]:
            # Decoder-only captioners (BLIP-2/OPT) return prompt + continuation: keep the continuation.
            if torch.equal(generated[:, : prompt_ids.shape[1]], prompt_ids):
                generated = generated[:, prompt_ids.shape[1] :]
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [clean_caption(t) for t in texts]


def read_captions(path: str | Path) -> dict[str, str]:
    """Captions from a JSONL file, one ``{"image": "<file name or path relative to --images>", "caption": "..."}``
    per line. Keys are normalised to POSIX relative paths; a bare file name also matches by name."""
    path = Path(path)
    captions: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FileNotFoundError(f"--captions {path}: cannot read the captions file: {err}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, caption = row["image"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f'--captions {path}, line {number}: expected {{"image": "...", "caption": "..."}}, got {line[:80]!r}'
            ) from err
        captions[Path(image).as_posix()] = clean_caption(str(caption))
    return captions
