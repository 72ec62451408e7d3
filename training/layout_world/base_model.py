"""The layout world's base text-to-image model: the toy world's SD1.5-shaped recipe (training.toy_world.base_model)
on layout-world scenes, with a finer latent grid.

Things here are 4-9 px wide and stand in a row, so counting and placing them needs more than the toy world's 4 x 4
latents: the VAE compresses x4 (32 px -> 8 x 8 x 8 latents). The text encoder's stand-in for CLIP's pretraining
predicts, at every position, what the caption states: the ground, the count (0-3) of each thing class and the
relation (none, left of, right of). So the frozen text features carry counts and relations as well as a small CLIP
would; whether the U-Net turns them into the right picture is what the study measures.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.toy_world.base_model import BaseModelConfig, train_base_model

from .scenes import GROUNDS, RELATIONS, THINGS, LayoutScene, make_scene, render, vocabulary

# The base model shipped with the pack (fp16, `python -m training.layout_world.base_model --out <this> --fp16`).
SHIPPED_LAYOUT_BASE = Path(__file__).resolve().parent / "assets" / "base"
BASE_CONFIG = replace(
    BaseModelConfig(), image_size=32, vae_channels=(16, 32, 32), latent_channels=8, unet_channels=(64, 128),
    vae_steps=600, text_steps=150, unet_steps=2500, describe_prob=0.0, pair_prob=0.0,
)
TEST_CONFIG = replace(BaseModelConfig.test(), image_size=32, vae_channels=(8, 8, 8), latent_channels=4)


def text_labels(scene: LayoutScene) -> tuple[int, ...]:
    """(ground, count of each THINGS class (0-3), relation (0 none, 1 left of, 2 right of)) of a caption."""
    counts = dict(scene.counts)
    relation = 0 if scene.relation is None else 1 + RELATIONS.index(scene.relation)
    return (GROUNDS.index(scene.ground), *(counts.get(name, 0) for name in THINGS), relation)


class LayoutWorld:
    """The layout world as the base-model training sees it (training.toy_world.base_model.World)."""

    def vocabulary(self) -> list[str]:
        return vocabulary()

    def image_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        for _ in range(cfg.batch_size):
            scene = make_scene(rng, cfg.image_size)
            images.append(render(scene.labels).astype(np.float32) / 127.5 - 1.0)
            captions.append("" if rng.random() < cfg.uncond_prob else scene.caption)
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), captions

    def text_batch(self, rng: random.Random, cfg: BaseModelConfig) -> tuple[list[str], torch.Tensor]:
        scenes = [make_scene(rng, cfg.image_size) for _ in range(cfg.text_batch)]
        return [s.caption for s in scenes], torch.tensor([text_labels(s) for s in scenes])

    @property
    def head_sizes(self) -> tuple[int, ...]:
        return (len(GROUNDS), *(4,) * len(THINGS), 1 + len(RELATIONS))


LAYOUT_WORLD = LayoutWorld()


def train_layout_base(out_dir: str | Path, cfg: BaseModelConfig = BASE_CONFIG, seed: int = 0,
                      threads: int | None = None, save_dtype: torch.dtype = torch.float32) -> Path:
    """The layout world's base model as an SD1.5-layout diffusers folder (weights in `save_dtype`)."""
    return train_base_model(out_dir, cfg, seed, threads, save_dtype, world=LAYOUT_WORLD)


def main(argv: list[str] | None = None) -> None:
    """python -m training.layout_world.base_model --out training/layout_world/assets/base --fp16 (the shipped copy)"""
    import argparse

    from training.cli import setup_logging

    parser = argparse.ArgumentParser(prog="python -m training.layout_world.base_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (a diffusers SD1.5-layout folder)")
    parser.add_argument("--preset", choices=("layout", "test"), default="layout",
                        help="layout (the study's) or test (seconds) (default layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and the weights (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    setup_logging()
    train_layout_base(args.out, BASE_CONFIG if args.preset == "layout" else TEST_CONFIG, args.seed,
                      args.threads or None, torch.float16 if args.fp16 else torch.float32)


if __name__ == "__main__":
    main()
