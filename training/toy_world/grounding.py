"""Does stage 3's attention grounding loss put each of two image-given subjects on its own side? (issue 15, part 3)

    python -m training.toy_world.grounding check --study runs/toy_study --seed 0 --weight 1      # one batch, seconds
    python -m training.toy_world.grounding compare --study runs/toy_study --out runs/grounding --weight W
    python -m training.toy_world.grounding sides --study runs/toy_study --grounded runs/grounding

`check` builds stage 3 with grounding from a study seed's stage-2 export and data and runs one batch: the grounding
term, whether AlignerNet's hooks are attached and which U-Net maps were recorded, and the gradient norm each term
(diffusion, grounding) puts on each trainable part (a weight is chosen from that ratio, not from evaluation numbers);
with `--steps N` it then trains N steps and reports how the logged terms moved (nothing is evaluated).

`compare` reruns, for every seed of a `training.toy_world.study` folder, only stage 3 with grounding, from that seed's
stage-2 export, shards and base model (the study folder is only read), with the study's stage-3 settings otherwise,
and evaluates it as the study did (`evaluate.evaluate_run`: the same prompts, references and noise). It writes
`<out>/seed_<k>/` (configs/stage3.toml, stage3/, eval/) and `<out>/grounding.json` / `grounding.md`: plain (the
study's own results.json) against grounded, mean +- SE over the seeds (`study.aggregate`) and the paired per-seed
difference. Resumable like the toy run: a seed whose export exists is only evaluated again.

`sides` measures, for the plain and the grounded stage-3 model of every seed, where the attention puts each of two
subjects (`side_attention`), and writes `<grounded>/side_attention.json`. Measured results: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from training.evaluation.report import write_json

from .evaluate import CONDITIONS, TABLE_COLUMNS, TWO_ENTITY_COLUMNS, evaluate_run
from .run import PRESETS, ToyRunConfig, add_thread_option, set_threads, stage_config, train_stage
from .study import aggregate, mean_and_se

log = logging.getLogger(__name__)

# The rows stage 3 changes; the others (stage-2 model, base model) are the same models in both runs.
STAGE3_CONDITIONS = ("after_stage3_image", "after_stage3_text")
ONE_SUBJECT_COLUMNS = [c for c in TABLE_COLUMNS if not c.endswith("images")]


def study_config(seed_dir: Path, preset: str = "full") -> ToyRunConfig:
    """The study seed's run config: the preset with the seed, checked against what the seed's timings.json recorded
    (a study made with other settings would make the comparison meaningless)."""
    saved = json.loads((seed_dir / "timings.json").read_text(encoding="utf-8"))["config"]
    cfg = replace(PRESETS[preset](), seed=saved["seed"])
    ours = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as the saved JSON has them
    differ = sorted(k for k in saved if ours.get(k) != saved[k])
    if differ:
        raise ValueError(f"{seed_dir} was not made with the {preset!r} preset: {differ} differ")
    return cfg


def stage3_table(study_seed: Path, out_seed: Path, cfg: ToyRunConfig, steps: int | None = None) -> dict:
    """The seed's stage-3 trainer config as the study wrote it, but with `cfg`'s [semantic] table, its own out_dir,
    and the study seed's stage-2 export, shards and base model as inputs."""
    shards = study_seed / "shards"
    sources = [{"kind": "compositional", "shards": str(shards / "compositional"), "weight": 2},
               {"kind": "captions", "shards": str(shards / "captions"), "weight": 1}]
    table = stage_config("stage3", out_seed, cfg, study_seed / "stage2" / "export.safetensors", sources,
                         steps or cfg.stage3_steps, cfg.stage3_lr)
    table["sd15"]["path"] = str(study_seed / "base")
    return table


def gradient_check(table: dict) -> dict:
    """One stage-3 batch of `table` (a trainer config with grounding): the loss terms, the hooks, and the gradient
    norm of each term on each trainable part of KOSMOS-G (by top-level parameter name)."""
    from training.stages import STAGES
    from training.train_config import config_from_dict

    cfg = config_from_dict(table)
    stage = STAGES["stage3"]()
    torch.manual_seed(cfg.run.seed)
    model = stage.build_model(cfg, torch.device("cpu"))
    semantic = model.frozen["semantic"]
    batch = next(iter(stage.build_dataloader(cfg, model, 0, 1)))
    seen: dict = {}
    terms: dict[str, torch.Tensor] = {}
    original = semantic.losses

    def capturing(**kwargs):  # the stage returns the terms detached; keep the graph of each to split the gradient
        seen["unet_maps"] = {name: list(attn.shape) for name, attn in semantic.store.unet.items()}
        seen["aligner_forwards"] = len(semantic.store.aligner)
        out = original(**kwargs)
        terms.update(out)
        return out

    semantic.losses = capturing
    try:
        loss, metrics = model(batch)
    finally:
        semantic.losses = original
    grounding = terms["semantic/grounding"]
    named = [(n, p) for n, p in model.kosmos.named_parameters() if p.requires_grad]
    norms = {}
    for term, value in (("diffusion", loss - grounding), ("grounding", grounding)):
        grads = torch.autograd.grad(value, [p for _, p in named], retain_graph=True, allow_unused=True)
        parts: dict[str, float] = {}
        for (name, _), g in zip(named, grads, strict=True):
            part = name.split(".")[0]
            parts[part] = parts.get(part, 0.0) + (0.0 if g is None else float(g.pow(2).sum()))
        norms[term] = {part: v**0.5 for part, v in parts.items()} | {"all": sum(parts.values()) ** 0.5}
    entities = [len(idx) for idx in batch["entity_token_index"]]
    return {
        "diffusion": float(metrics["loss/diffusion"]),
        "grounding": float(grounding.detach()),
        "grounding_weight": semantic.cfg.grounding_weight,
        "aligner_hooks": len(semantic._aligner_hooks),
        **seen,
        "samples": len(entities),
        "two_entity_samples": sum(n == 2 for n in entities),
        "entities": sum(entities),
        "grad_norm": norms,
    }


def side_attention(table: dict, draws: int = 4) -> dict[str, float]:
    """Where a stage-3 model's finest cross-attention puts each of two image-given subjects, on the two-subject scenes of
    `table`'s shards, prompted as the evaluation prompts them ("a <i> next to a <i> ...", white cut-outs, no null
    condition): the grounding token term (1 - share of the entity's attention inside its mask)^2 against its own
    mask and against the other subject's (`swapped`), mean over entities, maps and `draws` noise draws. Equal
    values mean the attention does not tell the sides apart; the table's [semantic] must have token weight 1 and
    pixel weight 0, so that the term is the token term alone."""
    from training.stages import STAGES
    from training.train_config import config_from_dict

    table = {**table, "model": {**table["model"], "cond_dropout": 0.0},
             "data": {**table["data"], "drop_entity_word_prob": 1.0, "cutout_prob": 1.0}}
    cfg = config_from_dict(table)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu")).eval()
    semantic = model.frozen["semantic"]
    batch = next(iter(stage.build_dataloader(cfg, model, 0, 1)))
    if any(len(idx) != 2 for idx in batch["entity_token_index"]):
        raise ValueError("side_attention needs shards of two-subject scenes only (pair_prob=1)")
    swapped = {**batch, "entity_masks": [m.flip(0) for m in batch["entity_masks"]]}
    values: dict[str, list[float]] = {"own": [], "swapped": []}
    original = semantic.losses

    def both(**kwargs):  # the swapped masks first: losses() empties the recorded maps
        values["swapped"].append(float(semantic._grounding({**swapped, "cond_dropped": None}, kwargs["noise_pred"])))
        out = original(**kwargs)
        values["own"].append(float(out["semantic/grounding"]))
        return out

    semantic.losses = both
    try:
        with torch.no_grad():
            for draw in range(draws):
                torch.manual_seed(1000 + draw)
                model(batch)
    finally:
        semantic.losses = original
    out = {k: sum(v) / len(v) for k, v in values.items()}
    # What attention spread evenly over the map would score: its share inside a mask is the mask's mean.
    uniform = [(1 - float(F.adaptive_avg_pool2d(m[None].float(), side).mean())) ** 2
               for side in semantic.cfg.grounding_sizes for masks in batch["entity_masks"] for m in masks]
    return out | {"uniform": sum(uniform) / len(uniform)}


def side_attention_table(study_seed: Path, scenes: Path, export: Path, count: int) -> dict:
    """The stage-3 config side_attention reads: `export` as the model, `count` two-subject scenes in one batch."""
    cfg = study_config(study_seed).with_grounding(1.0)
    cfg = replace(cfg, stage3_semantic=replace(cfg.stage3_semantic, grounding_pixel_weight=0.0))
    table = stage3_table(study_seed, scenes.parent / "unused", cfg)  # nothing is trained: out_dir is never written
    return {**table, "model": {**table["model"], "init": str(export)},
            "data": {**table["data"], "batch_size": count,
                     "sources": [{"kind": "compositional", "shards": str(scenes)}]}}


def sides(study_dir: str | Path, grounded_dir: str | Path, seeds: tuple[int, ...], count: int = 64) -> dict:
    """side_attention of every seed's plain (the study's) and grounded stage-3 model on `count` two-subject scenes
    drawn with a seed no training set uses; writes <grounded_dir>/side_attention.json."""
    from .shards import write_compositional_shards

    study_dir, grounded_dir = Path(study_dir), Path(grounded_dir)
    scenes = grounded_dir / "side_attention_scenes"
    if not scenes.is_dir():
        write_compositional_shards(scenes, count, 99, pair_prob=1.0, per_shard=count)
    result = {}
    for seed in seeds:
        study_seed = study_dir / f"seed_{seed}"
        result[seed] = {
            run: side_attention(side_attention_table(study_seed, scenes, export, count))
            for run, export in (("plain", study_seed / "stage3" / "export.safetensors"),
                                ("grounded", grounded_dir / f"seed_{seed}" / "stage3" / "export.safetensors"))}
        log.info("seed %d: %s", seed, result[seed])
    summary = {"per_seed": result, "scenes": count,
               "mean": {run: {k: mean_and_se([result[s][run][k] for s in seeds]) for k in ("own", "swapped")}
                        for run in ("plain", "grounded")},
               "command": " ".join(["python", "-m", "training.toy_world.grounding", *sys.argv[1:]])}
    write_json(summary, grounded_dir / "side_attention.json")
    return summary


def compare(study_dir: str | Path, out: str | Path, weight: float, seeds: tuple[int, ...] | None = None,
            sizes: tuple[int, ...] | None = None, preset: str = "full") -> dict:
    study_dir, out = Path(study_dir), Path(out)
    if seeds is None:
        seeds = tuple(sorted(int(p.name.split("_")[1]) for p in study_dir.glob("seed_*")))
    plain, grounded, times = {}, {}, {}
    for seed in seeds:
        study_seed, out_seed = study_dir / f"seed_{seed}", out / f"seed_{seed}"
        cfg = study_config(study_seed, preset).with_grounding(weight, sizes)
        log.info("seed %d of %s: stage 3 with grounding %s", seed, list(seeds), cfg.stage3_semantic)
        times[seed] = {}
        export = out_seed / "stage3" / "export.safetensors"
        if not export.is_file():
            t = time.time()
            export = train_stage("stage3", out_seed, stage3_table(study_seed, out_seed, cfg))
            times[seed]["stage3"] = round(time.time() - t, 1)
        t = time.time()
        grounded[seed] = evaluate_run(study_seed / "base", study_seed / "stage2" / "export.safetensors", export,
                                      out_seed / "eval", cfg.eval, cfg.base.image_size)
        times[seed]["evaluation"] = round(time.time() - t, 1)
        plain[seed] = json.loads((study_seed / "eval" / "results.json").read_text(encoding="utf-8"))
        log.info("seed %d done: %s", seed, times[seed])
    summary = {
        "study": str(study_dir),
        "seeds": list(seeds),
        "semantic": asdict(cfg.stage3_semantic),
        "plain": _tables(plain),
        "grounded": _tables(grounded),
        "difference": _differences(plain, grounded),
        # The stage-2 and base rows do not depend on stage 3: evaluated again here (threads, machine), any change is
        # the evaluation's own numerical noise, the scale below which a plain-grounded difference means nothing.
        "unchanged_rows_max_abs_change": _max_change(plain, grounded),
        "grounding_loss": {seed: _loss_curve(out / f"seed_{seed}" / "stage3" / "metrics.jsonl") for seed in seeds},
        "seconds": times,
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", "-m", "training.toy_world.grounding", *sys.argv[1:]]),
    }
    write_json(summary, out / "grounding.json")
    (out / "grounding.md").write_text(markdown(summary), encoding="utf-8")
    return summary


def _tables(per_seed: dict[int, dict]) -> dict:
    return {"one_subject": aggregate(per_seed, "conditions", ONE_SUBJECT_COLUMNS),
            "two_entity": aggregate(per_seed, "two_entity", TWO_ENTITY_COLUMNS)}


def _differences(plain: dict[int, dict], grounded: dict[int, dict]) -> dict:
    """Grounded minus plain per seed (same seed: same data, init and stage-2 model), mean +- SE over the seeds."""
    out = {}
    for section, columns in (("conditions", ONE_SUBJECT_COLUMNS), ("two_entity", TWO_ENTITY_COLUMNS)):
        out[section] = {}
        for condition in STAGE3_CONDITIONS:
            out[section][condition] = {}
            for metric in columns:
                diffs = [grounded[s][section][condition][metric] - plain[s][section][condition][metric]
                         for s in sorted(plain)]
                mean, se = mean_and_se(diffs)
                out[section][condition][metric] = {"mean": mean, "se": se, "values": diffs}
    return out


def _max_change(plain: dict[int, dict], grounded: dict[int, dict]) -> float:
    changes = [abs(grounded[s][section][c][m] - plain[s][section][c][m])
               for s in plain for section, columns in (("conditions", ONE_SUBJECT_COLUMNS),
                                                       ("two_entity", TWO_ENTITY_COLUMNS))
               for c in CONDITIONS if c not in STAGE3_CONDITIONS for m in columns]
    return max(changes)


def _loss_curve(metrics_path: Path) -> dict:
    """First and last logged grounding and diffusion terms of a trainer run (its metrics.jsonl)."""
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "loss/semantic/grounding" in r]
    if not rows:
        return {}
    return {f"{when}_{name}": rows[i][f"loss/{key}"] for when, i in (("first", 0), ("last", -1))
            for name, key in (("grounding", "semantic/grounding"), ("diffusion", "diffusion"))} | {
        "first_step": rows[0]["step"], "last_step": rows[-1]["step"]}


def _rows(summary: dict, section: str, key: str, columns: list[str]) -> list[str]:
    lines = ["| stage 3 | condition | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for run in ("plain", "grounded"):
        for condition in STAGE3_CONDITIONS:
            row = summary[run][key][condition]
            lines.append(f"| {run} | {condition} | " + " | ".join(f"{row[m]['mean']:.3f} ± {row[m]['se']:.3f}"
                                                                 for m in columns) + " |")
    for condition in STAGE3_CONDITIONS:
        row = summary["difference"][section][condition]
        lines.append(f"| grounded - plain (paired) | {condition} | "
                     + " | ".join(f"{row[m]['mean']:+.3f} ± {row[m]['se']:.3f}" for m in columns) + " |")
    return lines


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    semantic = summary["semantic"]
    losses = "; ".join(
        f"seed {s}: grounding {c['first_grounding']:.3f} (step {c['first_step']}) -> {c['last_grounding']:.3f} "
        f"(step {c['last_step']}), diffusion {c['first_diffusion']:.4f} -> {c['last_diffusion']:.4f}"
        for s, c in summary["grounding_loss"].items() if c)
    return (
        f"# Stage 3 plain vs with grounding: {len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± SE\n\n"
        f"Grounding weight {semantic['grounding_weight']}, map sizes {semantic['grounding_sizes']}; plain = "
        f"`{summary['study']}`'s own stage 3 and evaluation.\n\n"
        "Two entities, \"a <i> next to a <i> on the beach\":\n\n"
        + "\n".join(_rows(summary, "two_entity", "two_entity", TWO_ENTITY_COLUMNS))
        + "\n\nOne subject, \"a <i> on the beach\":\n\n"
        + "\n".join(_rows(summary, "conditions", "one_subject", ONE_SUBJECT_COLUMNS))
        + f"\n\nLargest change of a row stage 3 does not touch (stage-2 and base models, evaluated again): "
        f"{summary['unchanged_rows_max_abs_change']:.3f}. Logged terms (trainer's mean over its log interval): "
        f"{losses}. Command: `{summary['command']}` ({summary['threads']} thread"
        f"{'' if summary['threads'] == 1 else 's'}).\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.toy_world.grounding", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sides_parser = sub.add_parser("sides", help="where each model's attention puts the two subjects")
    sides_parser.add_argument("--study", required=True, help="the study folder (plain stage 3)")
    sides_parser.add_argument("--grounded", required=True, help="the compare --out folder (grounded stage 3)")
    sides_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_thread_option(sides_parser)
    for name in ("check", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--study", required=True, help="a training.toy_world.study output folder (only read)")
        p.add_argument("--weight", type=float, required=True, help="[semantic] grounding_weight")
        p.add_argument("--sizes", type=int, nargs="*", default=None,
                       help="attention map sides to ground (default 4: the toy U-Net's finest)")
        p.add_argument("--preset", choices=sorted(PRESETS), default="full", help="the study's preset (default full)")
        add_thread_option(p)
    sub.choices["check"].add_argument("--seed", type=int, default=0, help="study seed whose model and data to use")
    sub.choices["check"].add_argument("--out", default="runs/grounding_check",
                                      help="scratch folder for the config (default runs/grounding_check)")
    sub.choices["check"].add_argument("--steps", type=int, default=0,
                                      help="then train this many stage-3 steps into --out and report the first and "
                                           "last logged terms (default 0: the one batch only)")
    sub.choices["compare"].add_argument("--out", required=True, help="output folder")
    sub.choices["compare"].add_argument("--seeds", type=int, nargs="+", default=None,
                                        help="study seeds (default: every seed_<k> folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    if args.command == "sides":
        summary = sides(args.study, args.grounded, tuple(args.seeds))
        sys.stdout.write(json.dumps(summary["mean"], indent=2) + "\n")
        return
    sizes = None if args.sizes is None else tuple(args.sizes)
    if args.command == "check":
        seed_dir = Path(args.study) / f"seed_{args.seed}"
        cfg = study_config(seed_dir, args.preset).with_grounding(args.weight, sizes)
        result = gradient_check(stage3_table(seed_dir, Path(args.out), cfg))
        if args.steps:
            train_stage("stage3", Path(args.out), stage3_table(seed_dir, Path(args.out), cfg, args.steps))
            result["short_training"] = _loss_curve(Path(args.out) / "stage3" / "metrics.jsonl")
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    summary = compare(args.study, args.out, args.weight, None if args.seeds is None else tuple(args.seeds), sizes,
                      args.preset)
    sys.stdout.write(markdown(summary))


if __name__ == "__main__":
    main()
