"""Rule-based reading of a scene prompt: noun mentions with counts, and spatial relations between them.

"Two sheep, one eating grass with a tree in front of a mountain; the sky has a cloud" ->
mentions sheep x2, grass, tree, mountain, sky, cloud; relations sheep on grass, tree with-of grass (tree on grass),
tree in_front_of mountain, cloud in sky. Deterministic, no weights; also used by the metrics (expected classes,
counts and relations of a caption) and by the learned planner to name its entities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .labels import CLASS_ID, is_thing
from .vocabulary import MAX_PHRASE_WORDS, NUMBER_WORDS, is_countable, is_plural, lookup

RELATIONS = (
    "in_front_of", "behind", "along", "above", "below", "on", "in", "next_to", "left_of", "right_of", "with",
)

# Phrase -> canonical relation, longest first when matching. "with"/"has" mean the object belongs to the subject.
_RELATION_PHRASES: dict[str, str] = {
    "in front of": "in_front_of", "before": "in_front_of", "behind": "behind", "in back of": "behind",
    "along": "along", "alongside": "along", "lining": "along", "beside the length of": "along",
    "above": "above", "over": "above", "atop": "on", "on top of": "on", "on": "on", "upon": "on", "onto": "on",
    "eating": "on", "grazing": "on", "grazing on": "on", "standing on": "on", "parked on": "on", "parked in": "on",
    "driving on": "on", "walking on": "on", "sitting on": "on", "lying on": "on", "floating on": "on",
    "under": "below", "below": "below", "beneath": "below", "underneath": "below",
    "next to": "next_to", "beside": "next_to", "near": "next_to", "by": "next_to", "close to": "next_to",
    "to the left of": "left_of", "left of": "left_of", "on the left of": "left_of",
    "to the right of": "right_of", "right of": "right_of", "on the right of": "right_of",
    "in": "in", "inside": "in", "within": "in", "into": "in", "across": "in",
    "with": "with", "has": "with", "have": "with", "having": "with", "holding": "with",
}
_MAX_REL_WORDS = max(len(p.split()) for p in _RELATION_PHRASES)
_PRONOUNS = {"it", "them", "its", "this", "that"}
_CLAUSE_BREAKS = {";", "."}
_MULTIPLIER_NOUNS = {"pair", "couple", "group", "herd", "flock", "lot", "row"}


@dataclass(frozen=True)
class Mention:
    """A noun phrase naming a class. count: instances asked for (1 for stuff); start/end: word span."""

    index: int
    word: str
    class_id: int
    count: int
    explicit_count: bool
    start: int
    end: int

    @property
    def is_thing(self) -> bool:
        return is_thing(self.class_id)


@dataclass(frozen=True)
class Relation:
    subject: int  # mention index
    relation: str  # one of RELATIONS
    object: int  # mention index


@dataclass(frozen=True)
class ParsedPrompt:
    text: str
    words: tuple[str, ...]
    mentions: tuple[Mention, ...]
    relations: tuple[Relation, ...]

    def mention_of(self, class_id: int) -> Mention | None:
        return next((m for m in self.mentions if m.class_id == class_id), None)

    def counts(self) -> dict[int, int]:
        """class id -> instances asked for, things only (count accuracy is a thing metric, as in NSR-1K)."""
        out: dict[int, int] = {}
        for m in self.mentions:
            if m.is_thing:
                out[m.class_id] = out.get(m.class_id, 0) + m.count
        return out


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+|[;,.]", text.lower().replace("-", " "))


def _count_before(words: list[str], start: int) -> tuple[int | None, bool]:
    """Number word or digit shortly before a noun ("two white sheep", "a pair of shoes"); (count, is_new)."""
    new = False
    j = start - 1
    skipped = 0
    while j >= 0 and skipped <= 2:
        w = words[j]
        if w in _CLAUSE_BREAKS or w == ",":
            break
        if w in ("another", "other", "second", "third"):
            new = True
        if w.isdigit():
            return int(w), True
        if w in NUMBER_WORDS:
            n = NUMBER_WORDS[w]
            # "a pair of", "a couple of" -> the multiplier noun decides
            return n, new or n > 1
        if w == "of" and j > 0 and words[j - 1] in _MULTIPLIER_NOUNS:
            n = NUMBER_WORDS.get(words[j - 1], 3)
            return n, True
        if w in _RELATION_WORDS or lookup(w) is not None:
            break
        skipped += 1
        j -= 1
    return None, new


_RELATION_WORDS = {w for phrase in _RELATION_PHRASES for w in phrase.split()} - {"the", "of", "to"}


def parse_prompt(text: str) -> ParsedPrompt:
    words = tokenize(text)
    mentions: list[Mention] = []
    alias: dict[int, int] = {}  # raw mention position -> merged mention index
    spans: list[tuple[int, int, int]] = []  # (start, end, mention index)
    i = 0
    while i < len(words):
        match = None
        for n in range(min(MAX_PHRASE_WORDS, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + n])
            if any(w in _CLAUSE_BREAKS or w == "," for w in words[i : i + n]):
                continue
            cls = lookup(phrase)
            if cls is not None and not (n == 1 and words[i] in _RELATION_WORDS | set(NUMBER_WORDS)):
                match = (n, cls)
                break
        if match is None:
            i += 1
            continue
        n, cls = match
        cid = CLASS_ID[cls]
        count, new = _count_before(words, i)
        explicit = count is not None
        if count is None:
            count = 2 if is_plural(words[i + n - 1]) else 1
        if not is_countable(cid):
            count = 1
        previous = next((m for m in mentions if m.class_id == cid), None)
        if previous is not None and not new:
            # "a house and a house with a roof": a repeated mention without a new count is the same entity.
            spans.append((i, i + n, previous.index))
        else:
            idx = len(mentions)
            mentions.append(Mention(idx, " ".join(words[i : i + n]), cid, count, explicit, i, i + n))
            spans.append((i, i + n, idx))
        alias[i] = spans[-1][2]
        i += n
    relations = _relations(words, spans)
    return ParsedPrompt(text, tuple(words), tuple(mentions), tuple(relations))


def _relations(words: list[str], spans: list[tuple[int, int, int]]) -> list[Relation]:
    out: list[Relation] = []
    covered = set()
    for s, e, _ in spans:
        covered.update(range(s, e))
    i = 0
    while i < len(words):
        rel = None
        for n in range(min(_MAX_REL_WORDS, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + n])
            if phrase in _RELATION_PHRASES and not any(k in covered for k in range(i, i + n)):
                rel = (n, _RELATION_PHRASES[phrase])
                break
        if rel is None:
            i += 1
            continue
        n, name = rel
        subj = _subject_before(words, spans, i)
        obj = _object_after(words, spans, i + n, subj)
        if subj is not None and obj is not None and subj != obj:
            if name == "with":
                # "X with Y" / "X has Y": Y belongs to X; stored as (Y, with, X) so the subject is what gets placed.
                out.append(Relation(obj, "with", subj))
            else:
                out.append(Relation(subj, name, obj))
        i += n
    return out


def _subject_before(words: list[str], spans: list[tuple[int, int, int]], pos: int) -> int | None:
    best = None
    for _, e, idx in spans:
        if e <= pos and not any(words[k] in _CLAUSE_BREAKS for k in range(e, pos)):
            best = idx
    return best


def _object_after(words: list[str], spans: list[tuple[int, int, int]], pos: int, subj: int | None) -> int | None:
    for k in range(pos, min(pos + 5, len(words))):
        if words[k] in _CLAUSE_BREAKS or words[k] == ",":
            return None
        if words[k] in _PRONOUNS:
            # "a street with a tree along it": "it" is the latest mention before the subject.
            earlier = [idx for s, e, idx in spans if e <= pos and idx != subj]
            return earlier[-1] if earlier else None
        for s, _, idx in spans:
            if s == k:
                return idx
    return None
