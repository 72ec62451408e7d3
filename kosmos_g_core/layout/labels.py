"""COCO-Stuff-171: the internal label space of every layout in the pack.

Contiguous ids 0..170 in the order of the official COCO category ids (80 things with COCO ids 1..90, then 91 stuff
classes with COCO ids 92..182); 255 means unlabelled / ignore. The stuffthingmaps PNGs of COCO-Stuff 164k store
`COCO id - 1` (0..181) with 255 for unlabelled; `raw_to_contiguous` maps those values here.

The proposal's nouns (sheep, grass, tree, mountain, sky, cloud, car, street, window, house, roof) are all COCO-Stuff
classes (street -> road, sky -> sky-other, cloud -> clouds, window -> window-other), which is why this is the internal
space rather than ADE20K-150 (no sheep, cloud or roof there).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255
NUM_CLASSES = 171

# (COCO category id, name); things first, then stuff, each in ascending COCO id.
_THINGS: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
_STUFF_NAMES: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)
# Stuff COCO ids run without gaps from 92 to 182 in alphabetical order.
_STUFF: tuple[tuple[int, str], ...] = tuple((92 + i, name) for i, name in enumerate(_STUFF_NAMES))

COCO_STUFF_CLASSES: tuple[str, ...] = tuple(name for _, name in _THINGS + _STUFF)
COCO_IDS: tuple[int, ...] = tuple(cid for cid, _ in _THINGS + _STUFF)
NUM_THINGS = len(_THINGS)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(COCO_STUFF_CLASSES)}

assert len(COCO_STUFF_CLASSES) == NUM_CLASSES and NUM_THINGS == 80


def is_thing(class_id: int) -> bool:
    """Things are countable objects (COCO ids 1..90); stuff is amorphous background (sky, grass, road ...)."""
    return 0 <= class_id < NUM_THINGS


def class_id(name: str) -> int:
    """Contiguous id of an exact COCO-Stuff class name; KeyError names the vocabulary on a miss."""
    try:
        return CLASS_ID[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a COCO-Stuff-171 class name (e.g. 'sheep', 'sky-other', 'window-other')") from None


def display_name(class_id: int) -> str:
    """Human-friendly class name: 'sky-other' -> 'sky', 'window-other' -> 'window', 'door-stuff' -> 'door'."""
    if class_id == IGNORE:
        return "unlabelled"
    name = COCO_STUFF_CLASSES[class_id]
    for suffix in ("-other", "-stuff"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _raw_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for contiguous, coco_id in enumerate(COCO_IDS):
        lut[coco_id - 1] = contiguous
    return lut


RAW_TO_CONTIGUOUS: np.ndarray = _raw_lut()


def raw_to_contiguous(raw: np.ndarray) -> np.ndarray:
    """COCO-Stuff stuffthingmaps values (COCO id - 1, 255 unlabelled) -> contiguous 0..170 / 255, uint8 (H,W)."""
    return RAW_TO_CONTIGUOUS[np.asarray(raw, dtype=np.uint8)]
