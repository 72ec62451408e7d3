"""The toy world's CLIP: KOSMOS-G's vision tower pretrained on a wider picture world before stage 1.

A real KOSMOS-G starts from CLIP ViT-L/14, which learned from pictures of every shape in every colour; stage 1 trains
only its last block (KOSMOS-1's recipe, the trainer's default stage-1 selection). Trained from scratch on the 15 seen
subjects instead, the toy ViT read shape as a conjunction with colour: after stage 1 the MLLM named the colour of all
5 held-out subjects and the shape of none, also with one-word captions and with off-palette colours in stage 1
(docs/evaluation.md). This module gives the toy ViT the pretraining CLIP had, at the toy world's scale:

* **Pictures**: each of the 4 shapes in a colour drawn uniformly from the RGB cube, framed as stage 1's reference
  pictures are (`scenes.reference_image`: white cut-out or crop on a random place, the subject filling 56-90 % of
  the side). A colour closer than the scorer's FOREGROUND_DISTANCE to the picture's background is drawn again (the
  subject would not be visible).
* **Held out here too**: a picture is drawn again when its shape with its colour's nearest palette colour is a
  held-out subject (`scenes.shows_held_out`): the tower never sees a triangle that the scorer would read as red when
  the red triangle is held out, in any shade. So a held-out subject is new to the tower as well, only as a
  combination, and the zero-shot claim does not rest on the tower having seen it.
* **Objective**: the toy stand-in for CLIP's, as the toy text encoder's is (`base_model.pretrain_text_encoder`):
  linear heads on the mean of the tower's (N, 17, width) output tokens predict the shape (cross-entropy over 4) and
  the colour (mean squared error on RGB / 255).

`pretrain_vision_tower` trains a tower in place and returns its measurements, among them the heads' readings of the
20 palette subjects' reference pictures, the 5 held-out ones reported apart (`shape_held_out`: did the tower learn
shape apart from colour?). A toy-world run pretrains its own tower (seeded by the run); the demo starts from the one
shipped in `assets/vision_tower/`, as it starts from the shipped base model, made by

    python -m training.toy_world.vision_pretrain --out training/toy_world/assets/vision_tower   # 2 threads
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kosmos_g_core.config import KosmosGConfig, VisionConfig
from kosmos_g_core.image import preprocess
from kosmos_g_core.vision import VisionTransformer
from training.cli import setup_logging

from .scenes import (
    COLOURS,
    PLACES,
    SHAPES,
    SUBJECT_HALF,
    Subject,
    all_subjects,
    is_held_out,
    nearest,
    reference_image,
    shows_held_out,
)
from .scorer import FOREGROUND_DISTANCE
from .shards import SCENE_SIZE

log = logging.getLogger(__name__)

WHITE = (255, 255, 255)
_SHAPES = list(SHAPES)
# The shipped pretrained tower: its weights (vision_tower.safetensors) and how it was made (vision_pretrain.json).
SHIPPED_VISION_TOWER = Path(__file__).resolve().parent / "assets" / "vision_tower"
WEIGHTS_FILE, RECORD_FILE = "vision_tower.safetensors", "vision_pretrain.json"


def toy_vision_config() -> VisionConfig:
    """The toy KOSMOS-G's vision tower: the tiny preset's with 7 px patches, 4 x 4 patches of the 28 px input
    instead of 2 x 2, so that a subject's shape is not split over four patch corners."""
    return replace(KosmosGConfig.tiny().vision, patch_size=7)


@dataclass(frozen=True)
class VisionPretrainConfig:
    # 3,000 steps: the heads then read the shape of 4 of the 5 held-out subjects' cut-outs, and of every seen one
    # (seeds 0 and 1; 1,500 steps read 3 of 5), about 2 minutes on one thread.
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    # The colour term's weight: an RGB error of 0.1 per channel (26 levels) then costs about what a shape
    # cross-entropy of 0.1 does.
    colour_weight: float = 10.0

    @classmethod
    def test(cls) -> VisionPretrainConfig:
        return cls(steps=3, batch_size=8)


PRESETS = {"full": VisionPretrainConfig, "test": VisionPretrainConfig.test}


def random_colour(rng: random.Random, shape: str, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour drawn uniformly from the RGB cube, visible on `background` and never one that would make `shape`
    a held-out subject."""
    while True:
        colour = tuple(rng.randrange(256) for _ in range(3))
        contrast = sum((a - b) ** 2 for a, b in zip(colour, background, strict=True)) ** 0.5
        if contrast >= FOREGROUND_DISTANCE and not shows_held_out(shape, colour):
            return colour


def wide_world_picture(rng: random.Random, size: int = SCENE_SIZE):
    """(picture, shape index, RGB colour) of one random shape in a random colour, framed as stage 1's references."""
    shape = rng.choice(_SHAPES)
    cutout = rng.random() < 0.5
    place = rng.choice(list(PLACES))
    colour = random_colour(rng, shape, WHITE if cutout else PLACES[place])
    # Subject(shape, any palette colour): `fill` paints it in `colour`, so the palette colour is never drawn.
    picture = reference_image(Subject(shape, next(iter(COLOURS))), size, cutout=cutout, place=place,
                              crop=rng.uniform(2 * SUBJECT_HALF / 0.9, 1.0), fill=colour)
    return picture, _SHAPES.index(shape), colour


class _Heads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.shape = nn.Linear(width, len(_SHAPES))
        self.colour = nn.Linear(width, 3)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = tokens.mean(1)  # (N, width) from the tower's (N, 1 + patches, width) unit-norm tokens
        return self.shape(pooled), self.colour(pooled)


def _batch(rng: random.Random, count: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pictures, shapes, colours = zip(*(wide_world_picture(rng) for _ in range(count)), strict=True)
    pixels = torch.stack([preprocess(p, image_size) for p in pictures]).float()  # (N, 3, S, S) as KOSMOS-G's input
    return pixels, torch.tensor(shapes), torch.tensor(colours, dtype=torch.float32) / 255.0


@torch.no_grad()
def read_palette_subjects(tower: VisionTransformer, heads: _Heads) -> dict[str, float]:
    """The heads' readings of the 20 palette subjects' white cut-outs (the evaluation's references): shape right,
    and colour right when the predicted RGB's nearest palette colour is the subject's; seen and held-out apart."""
    subjects = all_subjects()
    pixels = torch.stack([preprocess(reference_image(s, cutout=True), tower.config.image_size)
                          for s in subjects]).float()
    shape_logits, rgb = heads(tower(pixels))
    shape_ok = [int(i) == _SHAPES.index(s.shape) for i, s in zip(shape_logits.argmax(-1), subjects, strict=True)]
    colour_ok = [nearest(255.0 * c.numpy(), COLOURS) == s.colour for c, s in zip(rgb, subjects, strict=True)]
    held = [is_held_out(s) for s in subjects]

    def share(values: list[bool], keep: bool) -> float:
        picked = [v for v, h in zip(values, held, strict=True) if h == keep]
        return sum(picked) / len(picked)

    return {"shape_seen": share(shape_ok, False), "shape_held_out": share(shape_ok, True),
            "colour_seen": share(colour_ok, False), "colour_held_out": share(colour_ok, True)}


def pretrain_vision_tower(tower: VisionTransformer, cfg: VisionPretrainConfig, seed: int) -> dict[str, float]:
    """Train `tower` in place on the wide picture world (module docstring); returns the last step's losses and the
    palette subjects' readings (`read_palette_subjects`)."""
    rng = random.Random(f"vision_pretrain/{seed}")
    torch.manual_seed(seed)
    heads = _Heads(tower.config.width)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    tower.train().requires_grad_(True)
    shape_loss = colour_loss = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        pixels, shapes, colours = _batch(rng, cfg.batch_size, tower.config.image_size)
        shape_logits, rgb = heads(tower(pixels))
        shape_loss = F.cross_entropy(shape_logits, shapes)
        colour_loss = F.mse_loss(rgb, colours)
        opt.zero_grad(set_to_none=True)
        (shape_loss + cfg.colour_weight * colour_loss).backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("vision tower step %d/%d shape loss %.4f colour loss %.5f", step, cfg.steps, shape_loss.item(),
                     colour_loss.item())
    tower.eval().requires_grad_(False)
    readings = read_palette_subjects(tower, heads)
    log.info("vision tower after pretraining, palette subjects' cut-outs: %s", readings)
    return {"shape_loss": shape_loss.item(), "colour_loss": colour_loss.item(), **readings}


def load_pretrained_tower(tower: VisionTransformer, folder: str | Path) -> dict:
    """Load a pretrained tower's weights (`folder`/vision_tower.safetensors, written by `main`) into `tower`; returns
    its record (how it was made and what it read)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, record = folder / WEIGHTS_FILE, folder / RECORD_FILE
    for path in (weights, record):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no pretrained toy vision tower: {path.name} is missing (make one "
                                    f"with `python -m training.toy_world.vision_pretrain --out {folder}`)")
    try:
        tower.load_state_dict(load_file(weights))
    except RuntimeError as err:
        raise ValueError(f"{weights} is not a tower of the toy KOSMOS-G's shape ({tower.config}): {err}") from err
    return json.loads(record.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    from training.evaluation.report import write_json

    from .run import add_thread_option, set_threads

    parser = argparse.ArgumentParser(prog="python -m training.toy_world.vision_pretrain",
                                     description="Pretrain the toy KOSMOS-G's vision tower on the wide picture world "
                                                 "and save it (the demo's shipped tower: --out "
                                                 "training/toy_world/assets/vision_tower, on 2 threads).")
    parser.add_argument("--out", required=True, help=f"output folder ({WEIGHTS_FILE} and {RECORD_FILE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pictures and the weights (default 0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="full: the toy world's pretraining; test: a few steps (default full)")
    add_thread_option(parser)
    args = parser.parse_args(argv)
    setup_logging()
    set_threads(args.threads)
    from safetensors.torch import save_file

    cfg = PRESETS[args.preset]()
    torch.manual_seed(args.seed)
    tower = VisionTransformer(toy_vision_config())
    measured = pretrain_vision_tower(tower, cfg, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, out / WEIGHTS_FILE)
    write_json({"config": asdict(cfg), "measured": measured, "seed": args.seed, "threads": args.threads,
                "vision": asdict(tower.config)}, out / RECORD_FILE)
    log.info("pretrained vision tower saved to %s", out)


if __name__ == "__main__":
    main()
