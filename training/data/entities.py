"""Entity (tag) handling of the official OpenImage compositional loader (``openimage_loader.py``).

Given a caption and its entity names, the official loader:

1. drops colour words, names that do not occur in the caption as a whole word (case-insensitive), and names that
   occur as a whole word in more than one name of the list (itself included: "dog" next to "dog bed" is dropped as
   ambiguous, duplicates drop each other);
2. sorts the remaining names by where their first whole-word match ends in the caption;
3. walks them in that order over the *rest* of the caption: find the name, extend the match to the end of the word
   ("dog" in "dog's" covers "dog's"), emit the text up to the word (word dropped) or including it (word kept),
   then the entity's image, and continue after the word. A name not found in the rest is skipped.

Whether the words are dropped is one coin per sample (``drop_object``), as in the official loader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

COLOUR_WORDS = frozenset(
    {
        "yellow", "blue", "red", "green", "white", "black", "brown", "grey", "gray", "purple", "pink", "orange",
        "cyan", "silver", "gold", "golden",
    }
)  # fmt: skip

# Characters that end a word when the match is extended (official list).
_WORD_END = frozenset(" ,.!?;:)]}")


def _whole_word(name: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(name) + r"\b", re.IGNORECASE)


def keep_entity(name: str, names: Sequence[str], caption: str) -> bool:
    """The official ``tag_filter``: not a colour, a whole word of the caption, not nested in another name."""
    if not name or name.lower() in COLOUR_WORDS:
        return False
    pattern = _whole_word(name)
    if pattern.search(caption) is None:
        return False
    return sum(pattern.search(other) is not None for other in names) <= 1


def entity_order(caption: str, names: Sequence[str]) -> list[int]:
    """Indices of the kept names, sorted by the end of their first whole-word match in the caption."""
    kept = [i for i, name in enumerate(names) if keep_entity(name, names, caption)]
    return sorted(kept, key=lambda i: _whole_word(names[i]).search(caption).end())


@dataclass(frozen=True)
class EntitySlot:
    """One entity placed in the prompt: the text before its image and the entity word inside that text.

    text: the snippet that precedes the image (ends with the entity word when the word is kept).
    prefix: ``text`` without the entity word (equal to ``text`` when the word is dropped); the word's tokens are
    the tokens of ``text`` beyond those of ``prefix``.
    """

    entity: int
    name: str
    text: str
    prefix: str


def place_entities(caption: str, names: Sequence[str], drop_words: bool) -> tuple[list[EntitySlot], str]:
    """The official walk: (one slot per placed entity in prompt order, trailing text after the last image)."""
    slots: list[EntitySlot] = []
    rest = caption
    for index in entity_order(caption, names):
        match = _whole_word(names[index]).search(rest)
        if match is None:
            continue
        head, tail = match.start(), match.end()
        while tail < len(rest) and rest[tail] not in _WORD_END:
            tail += 1
        prefix = rest[:head]
        text = prefix if drop_words else rest[:tail]
        slots.append(EntitySlot(entity=index, name=names[index], text=text, prefix=prefix))
        rest = rest[tail:]
    return slots, rest
