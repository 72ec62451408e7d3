r"""Compare layout planners on held-out captions: dataset mIoU, best-of-k, presence, counts, relations.

    python -m training.evaluation.layout --model runs/layout/export.safetensors --scenes 500 --seed 1
    python -m training.evaluation.layout --model M.safetensors --coco-captions captions_val2017.json \
        --coco-labels stuffthingmaps_trainval2017/val2017 --limit 5000

Without --model only the rule-based planner is scored; `learned` is the model's layout decoded with the prompt's
counts (what the node outputs), `--argmax` adds its raw per-pixel argmax. The `learned` row takes every counted noun's
count from the rule-based parser and decodes exactly that many instances, so its count accuracy (and the presence of
counted nouns) holds by construction; a model trained with mention tokens is also handed those counts as input. The
`learned_argmax` row uses nothing from the parser at decoding (classes from the argmax, instances cut along the
predicted contact lines): with a model trained with `model.mention_tokens=false` it measures what the model learns
from the caption words alone. The header names which kind of model was scored. Procedural scenes come from a seed
the training never uses (training uses seed 0; the default here is 1), so every caption is held out. Both planners
are scored on the same ground truths at the same resolution (`--size`, default 64; predictions are resized with
nearest neighbour). The result table goes to stdout (and to --json when given).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kosmos_g_core.layout.learned import LearnedPlanner, load_layout_model
from kosmos_g_core.layout.metrics import LayoutEvaluator, best_of_k
from kosmos_g_core.layout.planner import RuleBasedPlanner
from training.cli import setup_logging
from training.data.layout import CocoStuffLayouts, make_scene

log = logging.getLogger(__name__)


def held_out_scenes(count: int, seed: int = 1, size: int = 64) -> list[tuple[str, np.ndarray]]:
    return [(sc.caption, sc.labels) for sc in (make_scene(seed, i, size) for i in range(count))]


def coco_pairs(captions_json: str, labels_dir: str, size: int, limit: int) -> list[tuple[str, np.ndarray]]:
    ds = CocoStuffLayouts(captions_json, labels_dir, size=size, limit=limit)
    return [(ds[i]["caption"], ds[i]["labels"]) for i in range(len(ds))]


def score_rule_based(pairs: Sequence[tuple[str, np.ndarray]]) -> dict:
    planner = RuleBasedPlanner()
    ev = LayoutEvaluator()
    for caption, gt in pairs:
        h, w = gt.shape
        ev.update(caption, planner.plan(caption, width=w, height=h), gt)
    return ev.scores().as_dict()


def score_learned_argmax(planner: LearnedPlanner, pairs: Sequence[tuple[str, np.ndarray]], batch: int = 64) -> dict:
    """The model's per-pixel argmax, without count decoding (for comparison: better pixels, worse counts)."""
    from kosmos_g_core.layout.learned import layout_from_prediction

    ev = LayoutEvaluator()
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        labels, edges = planner.predict_maps([c for c, _ in chunk])
        for (caption, gt), lab, edge in zip(chunk, labels, edges, strict=True):
            h, w = gt.shape
            ev.update(caption, layout_from_prediction(lab, edge, caption).resized(w, h), gt)
    return ev.scores().as_dict()


def score_learned(planner: LearnedPlanner, pairs: Sequence[tuple[str, np.ndarray]], *, best_of: int = 1,
                  batch: int = 64, seed: int = 0) -> dict:
    ev = LayoutEvaluator()
    samples: list[list[np.ndarray]] = [[] for _ in pairs]
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        captions = [c for c, _ in chunk]
        for k, ((caption, gt), layout) in enumerate(zip(chunk, planner.layouts(captions), strict=True)):
            h, w = gt.shape
            layout = layout.resized(w, h)
            ev.update(caption, layout, gt)
            samples[start + k].append(layout.label_map)
        for j in range(best_of if best_of > 1 else 0):
            drawn = planner.layouts(captions, sample=True, seed=seed * 1000 + j + start)
            for k, ((_, gt), layout) in enumerate(zip(chunk, drawn, strict=True)):
                h, w = gt.shape
                samples[start + k].append(layout.resized(w, h).label_map)
    out = ev.scores().as_dict()
    if best_of > 1:
        out[f"best_of_{best_of + 1}_miou"] = best_of_k(samples, [g for _, g in pairs])[0]
    return out


def format_table(rows: dict[str, dict]) -> str:
    keys = ["miou", "pixel_accuracy", "presence_precision", "presence_recall", "count_accuracy", "relation_accuracy"]
    extra = sorted({k for r in rows.values() for k in r if k.startswith("best_of")})
    keys += extra
    lines = ["planner        " + " ".join(f"{k:>18}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:<14} " + " ".join(f"{r.get(k, float('nan')):>18.4f}" for k in keys))
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of this command, shared with `python -m training.eval layout`."""
    ap.add_argument("--model", default="", help="layout model .safetensors (from the layout stage); optional")
    ap.add_argument("--scenes", type=int, default=500, help="held-out procedural scenes")
    ap.add_argument("--seed", type=int, default=1, help="procedural data set seed (training uses 0)")
    ap.add_argument("--size", type=int, default=64, help="evaluation resolution")
    ap.add_argument("--best-of", type=int, default=0, help="also score best-of-(k+1): k sampled layouts + the argmax")
    ap.add_argument("--coco-captions", default="", help="COCO captions json (evaluate on COCO-Stuff instead)")
    ap.add_argument("--coco-labels", default="", help="COCO-Stuff stuffthingmaps folder of the same split")
    ap.add_argument("--limit", type=int, default=5000, help="COCO captions to evaluate")


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m training.evaluation.layout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--argmax", action="store_true",
                    help="also score the learned model's raw per-pixel argmax (no counts from the parser)")
    ap.add_argument("--json", default="", help="also write the scores to this file")
    args = ap.parse_args(argv)
    setup_logging(fmt="%(message)s")
    if args.coco_captions:
        pairs = coco_pairs(args.coco_captions, args.coco_labels, args.size, args.limit)
        where = f"COCO-Stuff ({len(pairs)} captions)"
    else:
        pairs = held_out_scenes(args.scenes, args.seed, args.size)
        where = f"{len(pairs)} held-out procedural scenes (seed {args.seed})"
    rows = {"rule_based": score_rule_based(pairs)}
    if args.model:
        planner = load_layout_model(args.model)
        mentions = planner.model.config.mention_tokens
        sys.stdout.write(f"model {args.model}: " + (
            "mention tokens on (the parser's class and count of each noun are model inputs)" if mentions else
            "mention tokens off (the model reads the caption words only)") + "\n")
        rows["learned"] = score_learned(planner, pairs, best_of=args.best_of)
        if args.argmax:
            rows["learned_argmax"] = score_learned_argmax(planner, pairs)
    sys.stdout.write(f"layout evaluation on {where}, {args.size}x{args.size}, dataset-level mIoU (171 classes)\n")
    sys.stdout.write(format_table(rows) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": where, "scores": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
