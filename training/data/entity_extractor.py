"""Extracting the foreground entities of a caption: an instruction-tuned LLM from a local folder (the official
builder used MPT-7B-Instruct), or a rule-based extractor (built-in noun list, no model, no downloads).

Both return names that occur in the caption as written, in order of appearance, without duplicates, so the
loader's whole-word match finds them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from .local_models import model_dtype, require_model_folder

log = logging.getLogger(__name__)

# Countable foreground things: the COCO object classes, the DreamBench subjects and other everyday objects,
# people and animals. Places and backgrounds (sky, grass, street, beach, room, wall ...) are deliberately absent:
# the official extraction prompt asks for foreground objects only.
NOUNS = frozenset(
    """
    person man woman boy girl child kid baby lady guy people player skier surfer rider chef doctor soldier
    bicycle bike car motorcycle motorbike airplane plane bus train truck boat ship van taxi tractor scooter
    skateboard surfboard snowboard skis sled kayak canoe helicopter rocket
    dog puppy cat kitten horse sheep cow bull elephant bear zebra giraffe bird duck chicken owl parrot penguin
    eagle pigeon swan goose fish shark dolphin whale turtle frog rabbit bunny mouse squirrel fox wolf deer lion
    tiger monkey panda koala kangaroo camel goat pig donkey butterfly bee spider snake lizard crab
    backpack umbrella handbag bag purse suitcase tie hat cap helmet glasses sunglasses shoe shoes sneaker sneakers
    boot boots sandal jacket coat shirt dress skirt scarf glove gloves sweater hoodie jeans watch necklace ring
    bottle cup mug glass wine fork knife spoon bowl plate teapot kettle pot pan jar can vase basket box
    banana apple orange sandwich broccoli carrot pizza donut doughnut cake cookie bread burger hotdog egg
    strawberry cherry grape lemon watermelon pineapple tomato potato salad sushi candy icecream
    chair couch sofa bed bench table desk stool shelf bookshelf cabinet drawer lamp candle clock mirror pillow
    cushion blanket rug curtain plant flower flowers tree bush cactus
    tv television laptop computer monitor keyboard phone cellphone smartphone remote camera microwave oven
    toaster sink refrigerator fridge toilet bathtub
    book books scissors toothbrush hairdrier teddy toy toys doll robot balloon kite frisbee ball football
    basketball racket bat guitar piano violin drum trumpet microphone speaker headphones
    sign statue sculpture fountain hydrant mailbox bucket barrel tent flag trophy crown sword shield
    backpacks umbrellas bottles cups bowls plates chairs tables lamps candles clocks vases boxes
    """.split()
)

# Two-word names that must stay whole (checked before single words).
COMPOUNDS = frozenset(
    {
        "teddy bear", "fire hydrant", "stop sign", "parking meter", "tennis racket", "baseball bat",
        "baseball glove", "wine glass", "hot dog", "potted plant", "dining table", "cell phone", "hair drier",
        "stuffed animal", "traffic light", "sports ball", "ice cream", "coffee mug", "coffee cup", "water bottle",
        "rubber duck", "sun glasses", "running shoe", "plush toy", "race car", "police car", "school bus",
    }
)  # fmt: skip

_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


def _singular(word: str) -> str | None:
    """The listed singular of a plural (dogs -> dog, boxes -> box, puppies -> puppy), or None."""
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in NOUNS:
            return word[: -len(suffix)] + replacement
    return None


class RuleEntityExtractor:
    """Nouns of the caption found in a built-in list (singular or plural), compounds first; at most
    ``max_entities``."""

    def __init__(self, max_entities: int = 4) -> None:
        self.max_entities = max_entities

    def __call__(self, caption: str) -> list[str]:
        words = [(m.group(0), m.start()) for m in _WORD.finditer(caption)]
        found: list[tuple[int, str]] = []
        used: set[int] = set()
        for i in range(len(words) - 1):
            pair = f"{words[i][0]} {words[i + 1][0]}"
            if pair.lower() in COMPOUNDS:
                found.append((words[i][1], caption[words[i][1] : words[i + 1][1] + len(words[i + 1][0])]))
                used.update((i, i + 1))
        for i, (word, start) in enumerate(words):
            if i in used:
                continue
            lower = word.lower()
            if lower in NOUNS or _singular(lower) is not None:
                found.append((start, word))
        names: list[str] = []
        for _, name in sorted(found):
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
        return names[: self.max_entities]


# The instruction of the official builder, re-phrased: foreground object nouns, comma-separated, no adjectives.
ENTITY_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n"
    "List every object mentioned in the caption, separated by commas. Only list foreground objects, never "
    "background elements such as places, locations or surroundings. Give nouns only, without adjectives.\n\n"
    "### Input:\n{caption}\n\n"
    "### Response:\n"
)


class LLMEntityExtractor:
    """A causal LM from a local folder answers :data:`ENTITY_PROMPT`; names not in the caption are dropped and an
    answer containing ``#`` is discarded (both as the official builder). Greedy decoding, so rebuilds agree."""

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 16, max_entities: int = 4) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = require_model_folder(
            path, "--entity-llm", "an instruction-tuned causal LM (the official builder used mosaicml/mpt-7b-instruct)"
        )
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.max_entities = max_entities
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=model_dtype(device))
        self.model.to(device).eval()
        log.info("entity LLM %s (%s) on %s", folder, type(self.model).__name__, device)

    @torch.no_grad()
    def __call__(self, caption: str) -> list[str]:
        prompt = ENTITY_PROMPT.format(caption=caption)
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        generated = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        answer = self.tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return parse_entity_answer(answer, caption, self.max_entities)


def parse_entity_answer(answer: str, caption: str, max_entities: int = 4) -> list[str]:
    """Names from an LLM answer ("dog, red ball, sofa"): first line only, each stripped, kept when it occurs in
    the caption (case-insensitive), duplicates removed."""
    if "#" in answer:
        return []
    names: list[str] = []
    for part in answer.strip().split("\n")[0].split(","):
        name = " ".join(part.split()).strip(" .;:")
        if name and name.lower() in caption.lower() and name.lower() not in (n.lower() for n in names):
            names.append(name)
    return names[:max_entities]
