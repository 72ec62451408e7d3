"""Layout-world training data as layout tar shards (training.data.layout.shards' format): `{key}.txt` caption,
`{key}.label.png` / `{key}.inst.png` label and instance maps, plus `{key}.png`, the picture. The text-to-layout stage
reads the first three, the ControlNet stage all four."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from training.data.writer import ShardWriter, encode_png

from .scenes import render, scenes


def write_layout_world_shards(out_dir: str | Path, count: int, seed: int, per_shard: int = 2000) -> list[Path]:
    """`count` scenes of scene set `seed` (held-out evaluation sets use other seeds)."""
    with ShardWriter(out_dir, "layout_world", per_shard) as writer:
        for i, scene in enumerate(scenes(seed, count)):
            writer.write({"__key__": f"s{seed:03d}{i:07d}", "txt": scene.caption,
                          "label.png": encode_png(Image.fromarray(scene.labels, mode="L")),
                          "inst.png": encode_png(Image.fromarray(scene.instances.astype("uint8"), mode="L")),
                          "png": encode_png(Image.fromarray(render(scene.labels)))})
    return writer.paths
