"""Colour palettes that stock segmentation ControlNets understand, with exact rendering and parsing.

* ``coco_panoptic_133``: detectron2 / panopticapi COCO panoptic categories (what OneFormer-COCO produces and
  control_v11p_sd15_seg was trained on besides ADE20K). COCO-Stuff-171 maps onto it through the official panoptic
  merges (tree+bush+branch+leaves -> tree-merged, clouds+sky+fog -> sky-other-merged ...); the 15 stuff classes that
  COCO panoptic removed (cloth, metal, plant-other ...) have no colour there and render as unlabelled black.
* ``ade20k_150``: the mmseg / OneFormer / UniFormer ADE20K palette (the other protocol of control_v11p_sd15_seg).
  The 171 -> 150 table is this project's judgement; it is lossy (sheep -> animal, clouds -> sky, roof -> house) and
  sends skyscraper to building, because ADE's own skyscraper colour equals its road colour.
* ``coco_stuff_171``: one distinct colour per internal class, for lossless previews and hand editing. Classes that
  are their own panoptic class, or the head of a merge (tree, sky-other, grass ...), reuse the panoptic colour so a
  171 render still reads sensibly to a COCO-trained ControlNet.

Rendering is a pure lookup (no anti-aliasing, no resampling); parsing maps each pixel to the nearest palette colour,
with black = unlabelled (255). Colour collisions: ADE road == ADE skyscraper (parsed as road); COCO potted plant ==
ADE van (resolved by the palette chosen or detected from the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labels import CLASS_ID, COCO_STUFF_CLASSES, IGNORE, NUM_CLASSES

UNLABELLED_COLOR = (0, 0, 0)


class PaletteError(ValueError):
    """An image is not a layout in the expected palette, or a palette name is unknown."""


# COCO panoptic 133: (COCO id, name, RGB); things then stuff, as in panopticapi's panoptic_coco_categories.json.
_COCO_PANOPTIC: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (1, "person", (220, 20, 60)), (2, "bicycle", (119, 11, 32)), (3, "car", (0, 0, 142)),
    (4, "motorcycle", (0, 0, 230)), (5, "airplane", (106, 0, 228)), (6, "bus", (0, 60, 100)),
    (7, "train", (0, 80, 100)), (8, "truck", (0, 0, 70)), (9, "boat", (0, 0, 192)),
    (10, "traffic light", (250, 170, 30)), (11, "fire hydrant", (100, 170, 30)), (13, "stop sign", (220, 220, 0)),
    (14, "parking meter", (175, 116, 175)), (15, "bench", (250, 0, 30)), (16, "bird", (165, 42, 42)),
    (17, "cat", (255, 77, 255)), (18, "dog", (0, 226, 252)), (19, "horse", (182, 182, 255)),
    (20, "sheep", (0, 82, 0)), (21, "cow", (120, 166, 157)), (22, "elephant", (110, 76, 0)),
    (23, "bear", (174, 57, 255)), (24, "zebra", (199, 100, 0)), (25, "giraffe", (72, 0, 118)),
    (27, "backpack", (255, 179, 240)), (28, "umbrella", (0, 125, 92)), (31, "handbag", (209, 0, 151)),
    (32, "tie", (188, 208, 182)), (33, "suitcase", (0, 220, 176)), (34, "frisbee", (255, 99, 164)),
    (35, "skis", (92, 0, 73)), (36, "snowboard", (133, 129, 255)), (37, "sports ball", (78, 180, 255)),
    (38, "kite", (0, 228, 0)), (39, "baseball bat", (174, 255, 243)), (40, "baseball glove", (45, 89, 255)),
    (41, "skateboard", (134, 134, 103)), (42, "surfboard", (145, 148, 174)), (43, "tennis racket", (255, 208, 186)),
    (44, "bottle", (197, 226, 255)), (46, "wine glass", (171, 134, 1)), (47, "cup", (109, 63, 54)),
    (48, "fork", (207, 138, 255)), (49, "knife", (151, 0, 95)), (50, "spoon", (9, 80, 61)),
    (51, "bowl", (84, 105, 51)), (52, "banana", (74, 65, 105)), (53, "apple", (166, 196, 102)),
    (54, "sandwich", (208, 195, 210)), (55, "orange", (255, 109, 65)), (56, "broccoli", (0, 143, 149)),
    (57, "carrot", (179, 0, 194)), (58, "hot dog", (209, 99, 106)), (59, "pizza", (5, 121, 0)),
    (60, "donut", (227, 255, 205)), (61, "cake", (147, 186, 208)), (62, "chair", (153, 69, 1)),
    (63, "couch", (3, 95, 161)), (64, "potted plant", (163, 255, 0)), (65, "bed", (119, 0, 170)),
    (67, "dining table", (0, 182, 199)), (70, "toilet", (0, 165, 120)), (72, "tv", (183, 130, 88)),
    (73, "laptop", (95, 32, 0)), (74, "mouse", (130, 114, 135)), (75, "remote", (110, 129, 133)),
    (76, "keyboard", (166, 74, 118)), (77, "cell phone", (219, 142, 185)), (78, "microwave", (79, 210, 114)),
    (79, "oven", (178, 90, 62)), (80, "toaster", (65, 70, 15)), (81, "sink", (127, 167, 115)),
    (82, "refrigerator", (59, 105, 106)), (84, "book", (142, 108, 45)), (85, "clock", (196, 172, 0)),
    (86, "vase", (95, 54, 80)), (87, "scissors", (128, 76, 255)), (88, "teddy bear", (201, 57, 1)),
    (89, "hair drier", (246, 0, 122)), (90, "toothbrush", (191, 162, 208)),
    (92, "banner", (255, 255, 128)), (93, "blanket", (147, 211, 203)), (95, "bridge", (150, 100, 100)),
    (100, "cardboard", (168, 171, 172)), (107, "counter", (146, 112, 198)), (109, "curtain", (210, 170, 100)),
    (112, "door-stuff", (92, 136, 89)), (118, "floor-wood", (218, 88, 184)), (119, "flower", (241, 129, 0)),
    (122, "fruit", (217, 17, 255)), (125, "gravel", (124, 74, 181)), (128, "house", (70, 70, 70)),
    (130, "light", (255, 228, 255)), (133, "mirror-stuff", (154, 208, 0)), (138, "net", (193, 0, 92)),
    (141, "pillow", (76, 91, 113)), (144, "platform", (255, 180, 195)), (145, "playingfield", (106, 154, 176)),
    (147, "railroad", (230, 150, 140)), (148, "river", (60, 143, 255)), (149, "road", (128, 64, 128)),
    (151, "roof", (92, 82, 55)), (154, "sand", (254, 212, 124)), (155, "sea", (73, 77, 174)),
    (156, "shelf", (255, 160, 98)), (159, "snow", (255, 255, 255)), (161, "stairs", (104, 84, 109)),
    (166, "tent", (169, 164, 131)), (168, "towel", (225, 199, 255)), (171, "wall-brick", (137, 54, 74)),
    (175, "wall-stone", (135, 158, 223)), (176, "wall-tile", (7, 246, 231)), (177, "wall-wood", (107, 255, 200)),
    (178, "water-other", (58, 41, 149)), (180, "window-blind", (183, 121, 142)),
    (181, "window-other", (255, 73, 97)), (184, "tree-merged", (107, 142, 35)),
    (185, "fence-merged", (190, 153, 153)), (186, "ceiling-merged", (146, 139, 141)),
    (187, "sky-other-merged", (70, 130, 180)), (188, "cabinet-merged", (134, 199, 156)),
    (189, "table-merged", (209, 226, 140)), (190, "floor-other-merged", (96, 36, 108)),
    (191, "pavement-merged", (96, 96, 96)), (192, "mountain-merged", (64, 170, 64)),
    (193, "grass-merged", (152, 251, 152)), (194, "dirt-merged", (208, 229, 228)),
    (195, "paper-merged", (206, 186, 171)), (196, "food-other-merged", (152, 161, 64)),
    (197, "building-other-merged", (116, 112, 0)), (198, "rock-merged", (0, 114, 143)),
    (199, "wall-other-merged", (102, 102, 156)), (200, "rug-merged", (250, 141, 255)),
)

# COCO panoptic merges of COCO-Stuff stuff classes; the first member is the representative used when parsing back.
PANOPTIC_MERGES: dict[str, tuple[str, ...]] = {
    "tree-merged": ("tree", "branch", "bush", "leaves"),
    "fence-merged": ("fence", "cage", "railing"),
    "ceiling-merged": ("ceiling-other", "ceiling-tile"),
    "sky-other-merged": ("sky-other", "clouds", "fog"),
    "cabinet-merged": ("cabinet", "cupboard"),
    "table-merged": ("table", "desk-stuff"),
    "floor-other-merged": ("floor-other", "floor-marble", "floor-tile"),
    "pavement-merged": ("pavement", "floor-stone"),
    "mountain-merged": ("mountain", "hill"),
    "grass-merged": ("grass", "moss", "straw"),
    "dirt-merged": ("dirt", "mud"),
    "paper-merged": ("paper", "napkin"),
    "food-other-merged": ("food-other", "salad", "vegetable"),
    "building-other-merged": ("building-other", "skyscraper"),
    "rock-merged": ("rock", "stone"),
    "wall-other-merged": ("wall-other", "wall-concrete", "wall-panel"),
    "rug-merged": ("rug", "mat", "carpet"),
}

_ADE_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
_ADE_COLORS: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

# COCO-Stuff-171 name -> ADE20K-150 name. Missing classes have no ADE counterpart and render as unlabelled.
ADE_FROM_COCO_STUFF: dict[str, str] = {
    "person": "person", "bicycle": "bicycle", "car": "car", "motorcycle": "minibike", "airplane": "airplane",
    "bus": "bus", "truck": "truck", "boat": "boat", "traffic light": "traffic light", "stop sign": "signboard",
    "bench": "bench", "bird": "animal", "cat": "animal", "dog": "animal", "horse": "animal", "sheep": "animal",
    "cow": "animal", "elephant": "animal", "bear": "animal", "zebra": "animal", "giraffe": "animal",
    "backpack": "bag", "handbag": "bag", "suitcase": "bag", "sports ball": "ball", "bottle": "bottle",
    "wine glass": "glass", "cup": "glass", "bowl": "plate", "banana": "food", "apple": "food", "sandwich": "food",
    "orange": "food", "broccoli": "food", "carrot": "food", "hot dog": "food", "pizza": "food", "donut": "food",
    "cake": "food", "chair": "chair", "couch": "sofa", "potted plant": "plant", "bed": "bed",
    "dining table": "table", "toilet": "toilet", "tv": "television receiver", "laptop": "computer",
    "microwave": "microwave", "oven": "oven", "sink": "sink", "refrigerator": "refrigerator", "book": "book",
    "clock": "clock", "vase": "vase", "teddy bear": "plaything",
    "banner": "poster", "blanket": "blanket", "branch": "tree", "bridge": "bridge", "building-other": "building",
    "bush": "plant", "cabinet": "cabinet", "cardboard": "box", "carpet": "rug", "ceiling-other": "ceiling",
    "ceiling-tile": "ceiling", "clothes": "apparel", "clouds": "sky", "counter": "counter", "cupboard": "cabinet",
    "curtain": "curtain", "desk-stuff": "desk", "dirt": "earth", "door-stuff": "door", "fence": "fence",
    "floor-marble": "floor", "floor-other": "floor", "floor-stone": "floor", "floor-tile": "floor",
    "floor-wood": "floor", "flower": "flower", "fog": "sky", "food-other": "food", "fruit": "food",
    "grass": "grass", "gravel": "earth", "ground-other": "earth", "hill": "hill", "house": "house",
    "leaves": "tree", "light": "light", "mat": "rug", "mirror-stuff": "mirror", "moss": "grass",
    "mountain": "mountain", "mud": "earth", "pavement": "sidewalk", "pillow": "pillow", "plant-other": "plant",
    "playingfield": "field", "railing": "railing", "river": "river", "road": "road", "rock": "rock",
    "roof": "house", "rug": "rug", "salad": "food", "sand": "sand", "sea": "sea", "shelf": "shelf",
    "sky-other": "sky", "skyscraper": "building", "stairs": "stairs", "stone": "rock", "table": "table",
    "tent": "tent", "towel": "towel", "tree": "tree", "vegetable": "food", "wall-brick": "wall",
    "wall-concrete": "wall", "wall-other": "wall", "wall-panel": "wall", "wall-stone": "wall", "wall-tile": "wall",
    "wall-wood": "wall", "water-other": "water", "window-blind": "blind", "window-other": "windowpane",
}
# ADE classes whose parse-back representative is not the first COCO-Stuff class mapped onto them (or that have none).
_ADE_REPRESENTATIVE: dict[str, str] = {
    "animal": "dog", "sky": "sky-other", "tree": "tree", "plant": "plant-other", "wall": "wall-other",
    "floor": "floor-other", "earth": "ground-other", "house": "house", "rug": "rug", "food": "food-other",
    "glass": "wine glass", "bag": "handbag", "rock": "rock", "ceiling": "ceiling-other", "cabinet": "cabinet",
    "table": "table", "skyscraper": "skyscraper", "lake": "water-other", "swimming pool": "water-other",
    "waterfall": "water-other", "palm": "tree", "land": "ground-other", "path": "pavement",
    "dirt track": "dirt", "stairway": "stairs", "step": "stairs", "ship": "boat", "van": "car", "armchair": "chair",
    "swivel chair": "chair", "seat": "chair", "stool": "chair", "coffee table": "table", "countertop": "counter",
    "screen": "tv", "monitor": "tv", "crt screen": "tv", "lamp": "light", "chandelier": "light",
    "streetlight": "light", "sconce": "light", "painting": "banner", "signboard": "stop sign", "flag": "banner",
    "tower": "building-other", "hovel": "house", "wardrobe": "cabinet", "bookcase": "shelf",
}


@dataclass(frozen=True, eq=False)
class Palette:
    """A named colour palette plus the tables that connect it with the internal COCO-Stuff-171 space.

    colors: (N,3) uint8; from_internal: (256,) uint8 LUT internal id -> palette id (255 = no colour);
    to_internal: (256,) uint8 LUT palette id -> representative internal id (255 = none).
    """

    name: str
    classes: tuple[str, ...]
    colors: np.ndarray
    from_internal: np.ndarray
    to_internal: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def render_ids(self, ids: np.ndarray) -> np.ndarray:
        """Palette ids (H,W) (255 = unlabelled) -> (H,W,3) uint8, an exact table lookup."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.colors
        table[IGNORE] = UNLABELLED_COLOR
        return table[np.asarray(ids, dtype=np.uint8)]

    def render(self, label_map: np.ndarray) -> np.ndarray:
        """Internal COCO-Stuff-171 label map (H,W) -> (H,W,3) uint8 image in this palette."""
        return self.render_ids(self.from_internal[np.asarray(label_map, dtype=np.uint8)])


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


def _build_coco_panoptic() -> Palette:
    names = tuple(name for _, name, _ in _COCO_PANOPTIC)
    index = {name: i for i, name in enumerate(names)}
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    merged_member = {m: merged for merged, members in PANOPTIC_MERGES.items() for m in members}
    for internal, name in enumerate(COCO_STUFF_CLASSES):
        target = merged_member.get(name, name)
        if target in index:
            forward[internal] = index[target]
    for merged, members in PANOPTIC_MERGES.items():
        backward[index[merged]] = CLASS_ID[members[0]]
    for i, name in enumerate(names):
        if i not in backward:
            backward[i] = CLASS_ID[name]
    colors = np.array([c for _, _, c in _COCO_PANOPTIC], dtype=np.uint8)
    return Palette("coco_panoptic_133", names, colors, _lut(forward), _lut(backward))


def _build_ade20k() -> Palette:
    index = {name: i for i, name in enumerate(_ADE_CLASSES)}
    forward = {CLASS_ID[src]: index[dst] for src, dst in ADE_FROM_COCO_STUFF.items()}
    backward: dict[int, int] = {index[name]: CLASS_ID[rep] for name, rep in _ADE_REPRESENTATIVE.items()}
    for internal, ade in sorted(forward.items()):
        backward.setdefault(ade, internal)
    for name in _ADE_CLASSES:  # ADE names that are also exact COCO-Stuff names (sand, sea, bridge ...)
        if name in CLASS_ID and index[name] not in backward:
            backward[index[name]] = CLASS_ID[name]
    colors = np.array(_ADE_COLORS, dtype=np.uint8)
    return Palette("ade20k_150", _ADE_CLASSES, colors, _lut(forward), _lut(backward))


def _build_coco_stuff(panoptic: Palette, ade: Palette) -> Palette:
    """Panoptic colour where the class owns it (itself or head of a merge), else a fresh colour unused elsewhere."""
    heads = {members[0] for members in PANOPTIC_MERGES.values()}
    taken = {tuple(c) for c in panoptic.colors} | {tuple(c) for c in ade.colors} | {UNLABELLED_COLOR}
    colors = np.zeros((NUM_CLASSES, 3), dtype=np.uint8)
    k = 0
    for internal, name in enumerate(COCO_STUFF_CLASSES):
        pan = int(panoptic.from_internal[internal])
        merged = pan != IGNORE and panoptic.classes[pan].endswith("-merged")
        if pan != IGNORE and (not merged or name in heads):
            colors[internal] = panoptic.colors[pan]
            continue
        # A fixed low-discrepancy walk through RGB space; skips colours any palette already uses.
        while True:
            k += 1
            candidate = ((k * 97 + 31) % 256, (k * 151 + 67) % 256, (k * 211 + 113) % 256)
            if candidate not in taken:
                break
        taken.add(candidate)
        colors[internal] = candidate
    identity = {i: i for i in range(NUM_CLASSES)}
    return Palette("coco_stuff_171", COCO_STUFF_CLASSES, colors, _lut(identity), _lut(identity))


COCO_PANOPTIC_133 = _build_coco_panoptic()
ADE20K_150 = _build_ade20k()
COCO_STUFF_171 = _build_coco_stuff(COCO_PANOPTIC_133, ADE20K_150)
PALETTES: dict[str, Palette] = {p.name: p for p in (COCO_PANOPTIC_133, ADE20K_150, COCO_STUFF_171)}
PALETTE_NAMES: tuple[str, ...] = tuple(PALETTES)


def get_palette(name: str | Palette) -> Palette:
    if isinstance(name, Palette):
        return name
    try:
        return PALETTES[name]
    except KeyError:
        raise PaletteError(f"unknown palette {name!r}; expected one of {', '.join(PALETTE_NAMES)}") from None


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8, or float in [0,1] (a ComfyUI IMAGE) rounded to the nearest 8-bit value; alpha is dropped."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise PaletteError(f"expected an (H,W,3) RGB image, got shape {tuple(arr.shape)}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _nearest(colors: np.ndarray, palette: Palette) -> tuple[np.ndarray, np.ndarray]:
    """For K unique colours (K,3): nearest palette id (black -> 255) and its Euclidean distance."""
    table = np.concatenate([palette.colors, np.array([UNLABELLED_COLOR], dtype=np.uint8)]).astype(np.int32)
    ids = np.concatenate([np.arange(palette.num_classes), [IGNORE]])
    d2 = ((colors.astype(np.int32)[:, None, :] - table[None, :, :]) ** 2).sum(-1)  # (K, N+1)
    # argmin takes the first of equal colours, so ADE's shared road/skyscraper colour parses as road.
    best = d2.argmin(1)
    return ids[best].astype(np.uint8), np.sqrt(d2[np.arange(len(colors)), best])


def _unique_colors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    colors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1).astype(np.uint8)
    return colors, inverse.reshape(rgb.shape[:2]), counts


def off_palette_fraction(image: np.ndarray, palette: str | Palette, tolerance: float = 24.0) -> float:
    """Share of pixels farther than `tolerance` (RGB distance) from every colour of the palette (and black)."""
    rgb = to_uint8_rgb(image)
    colors, _, counts = _unique_colors(rgb)
    _, dist = _nearest(colors, get_palette(palette))
    return float(counts[dist > tolerance].sum() / counts.sum())


def detect_palette(image: np.ndarray) -> Palette:
    """The palette whose colours explain the most pixels exactly (ties: the fewest off-palette pixels)."""
    rgb = to_uint8_rgb(image)
    colors, _, counts = _unique_colors(rgb)
    scores = []
    for palette in (COCO_PANOPTIC_133, ADE20K_150, COCO_STUFF_171):
        _, dist = _nearest(colors, palette)
        scores.append((counts[dist == 0].sum(), -counts[dist > 24.0].sum(), palette))
    return max(scores, key=lambda s: (s[0], s[1]))[2]


def parse_ids(
    image: np.ndarray, palette: str | Palette = "auto", *, tolerance: float = 24.0, max_off_palette: float = 0.02
) -> tuple[np.ndarray, Palette]:
    """(H,W,3) palette image -> palette ids (H,W) uint8 by nearest palette colour (black = 255), and the palette.

    Raises PaletteError when more than `max_off_palette` of the pixels are farther than `tolerance` from every
    palette colour: a photo, a JPEG, a bilinearly resized map or a map in another palette.
    """
    rgb = to_uint8_rgb(image)
    pal = detect_palette(rgb) if palette == "auto" else get_palette(palette)
    colors, inverse, counts = _unique_colors(rgb)
    ids, dist = _nearest(colors, pal)
    off = float(counts[dist > tolerance].sum() / counts.sum())
    if off > max_off_palette:
        others = [
            p.name for p in PALETTES.values() if p is not pal and off_palette_fraction(rgb, p, tolerance) <= max_off_palette
        ]
        hint = f" It does look like a {others[0]} layout: choose that palette." if others else (
            " Layout images must be stored losslessly (PNG) and resized with nearest-neighbour only; "
            "a photo or a JPEG cannot be parsed."
        )
        raise PaletteError(
            f"the image is not a {pal.name} layout: {off:.1%} of its pixels are more than {tolerance:g} away from "
            f"every {pal.name} colour (at most {max_off_palette:.1%} allowed).{hint}"
        )
    return ids[inverse], pal


def parse_layout_image(image: np.ndarray, palette: str | Palette = "auto", **kwargs) -> tuple[np.ndarray, Palette]:
    """(H,W,3) palette image -> internal COCO-Stuff-171 label map (H,W) uint8 (255 unlabelled), and the palette."""
    ids, pal = parse_ids(image, palette, **kwargs)
    return pal.to_internal[ids], pal
