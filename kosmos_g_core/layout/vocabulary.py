"""Words to COCO-Stuff classes: synonyms, plurals and number words used by the prompt parser.

The table is deliberately small and explicit: every noun a user types must land on one internal class, and an
unknown noun is simply not an entity (the rule-based planner never guesses). `resolve_class` is the one entry point
for user-facing class names (node inputs), and raises with suggestions on a miss.
"""

from __future__ import annotations

import difflib

from .labels import CLASS_ID, COCO_STUFF_CLASSES, display_name

# word (singular, lower case) -> COCO-Stuff-171 class name. Exact class names and their display names are added below.
SYNONYMS: dict[str, str] = {
    # people and animals
    "man": "person", "woman": "person", "boy": "person", "girl": "person", "child": "person", "kid": "person",
    "guy": "person", "lady": "person", "player": "person", "skier": "person", "surfer": "person",
    "rider": "person", "people": "person", "human": "person", "pedestrian": "person", "baby": "person",
    "kitten": "cat", "kitty": "cat", "puppy": "dog", "pony": "horse", "lamb": "sheep", "cattle": "cow",
    "calf": "cow", "bull": "cow", "seagull": "bird", "gull": "bird", "duck": "bird", "pigeon": "bird",
    "goose": "bird", "parrot": "bird", "teddy": "teddy bear",
    # vehicles
    "bike": "bicycle", "taxi": "car", "suv": "car", "sedan": "car", "automobile": "car", "motorbike": "motorcycle",
    "scooter": "motorcycle", "plane": "airplane", "aeroplane": "airplane", "jet": "airplane",
    "aircraft": "airplane", "lorry": "truck", "ship": "boat", "sailboat": "boat", "yacht": "boat", "canoe": "boat",
    "kayak": "boat", "locomotive": "train", "hydrant": "fire hydrant",
    # objects
    "ball": "sports ball", "football": "sports ball", "soccer ball": "sports ball", "glass": "wine glass",
    "mug": "cup", "sofa": "couch", "plant": "potted plant", "table": "dining table", "television": "tv",
    "computer": "laptop", "phone": "cell phone", "fridge": "refrigerator", "doughnut": "donut",
    # nature and places
    "sky": "sky-other", "cloud": "clouds", "mist": "fog", "lawn": "grass", "meadow": "grass", "field": "grass",
    "pasture": "grass", "street": "road", "highway": "road", "lane": "road", "avenue": "road",
    "sidewalk": "pavement", "ocean": "sea", "water": "water-other", "lake": "water-other", "pond": "water-other",
    "stream": "river", "beach": "sand", "desert": "sand", "shrub": "bush", "hedge": "bush", "boulder": "rock",
    "home": "house", "cottage": "house", "cabin": "house", "hut": "house", "barn": "house",
    "building": "building-other", "tower": "skyscraper", "window": "window-other", "door": "door-stuff",
    "wall": "wall-other", "floor": "floor-other", "ceiling": "ceiling-other", "mud": "mud", "ground": "ground-other",
    "earth": "dirt", "soil": "dirt", "railway": "railroad", "track": "railroad", "tracks": "railroad",
    "carpet": "carpet", "rug": "rug", "desk": "desk-stuff", "mirror": "mirror-stuff", "leaf": "leaves",
    "flowers": "flower", "hills": "hill", "mountains": "mountain",
}

IRREGULAR_PLURALS: dict[str, str] = {
    "people": "people", "men": "man", "women": "woman", "children": "child", "kids": "kid", "mice": "mouse",
    "geese": "goose", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "sheep": "sheep", "skis": "skis",
    "clothes": "clothes", "cattle": "cattle", "fish": "fish", "deer": "deer", "buses": "bus", "boxes": "box",
    "benches": "bench", "sandwiches": "sandwich", "bushes": "bush", "skies": "sky", "ponies": "pony",
    "puppies": "puppy", "glasses": "glass", "grass": "grass", "gravel": "gravel", "sand": "sand", "moss": "moss",
    "teddies": "teddy", "cities": "city", "lorries": "lorry", "babies": "baby", "ladies": "lady",
    "tomatoes": "tomato", "potatoes": "potato", "species": "species", "tracks": "tracks",
}

NUMBER_WORDS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "pair": 2, "couple": 2, "several": 3, "few": 3, "many": 4, "some": 2,
    "both": 2, "twin": 2, "another": 1,
}

_LOOKUP: dict[str, str] = {}


def _build_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for name in COCO_STUFF_CLASSES:
        table[name] = name
        table[name.replace("-", " ")] = name
        table.setdefault(display_name(CLASS_ID[name]), name)
    table.update(SYNONYMS)
    return table


_LOOKUP = _build_lookup()
MAX_PHRASE_WORDS = max(len(k.split()) for k in _LOOKUP)


def singular(word: str) -> str:
    """Plural -> singular with an irregular table and the usual English suffix rules."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word in _LOOKUP or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def is_plural(word: str) -> bool:
    return singular(word) != word or word in ("people", "cattle")


def lookup(phrase: str) -> str | None:
    """A lower-case word or multi-word phrase (singular or plural) -> COCO-Stuff class name, or None."""
    phrase = phrase.strip().lower()
    if phrase in _LOOKUP:
        return _LOOKUP[phrase]
    words = phrase.split()
    if not words:
        return None
    words[-1] = singular(words[-1])
    return _LOOKUP.get(" ".join(words))


# Stuff classes that come as countable objects ("two trees", "three houses"); the others are amorphous regions.
COUNTABLE_STUFF: frozenset[str] = frozenset({
    "tree", "bush", "house", "building-other", "skyscraper", "tent", "rock", "stone", "window-other",
    "window-blind", "door-stuff", "roof", "bridge", "clouds", "flower", "pillow", "towel", "banner", "light",
})


def is_countable(class_id: int) -> bool:
    """Things, and the stuff classes people count (trees, houses, windows, clouds ...)."""
    from .labels import is_thing

    return is_thing(class_id) or COCO_STUFF_CLASSES[class_id] in COUNTABLE_STUFF


def resolve_class(name: str) -> int:
    """User-facing class name (any synonym, e.g. 'street', 'sky', 'window-other') -> internal id.

    Raises KeyError with the closest known names when nothing matches.
    """
    found = lookup(name)
    if found is None:
        close = difflib.get_close_matches(name.strip().lower(), list(_LOOKUP), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Use a COCO-Stuff class name such as 'sheep' or 'sky'."
        raise KeyError(f"unknown class name {name!r}.{hint}")
    return CLASS_ID[found]


def known_words() -> tuple[str, ...]:
    """Every word or phrase the parser maps to a class (for documentation and tests)."""
    return tuple(sorted(_LOOKUP))
