"""The toy world over several seeds: each seed is a whole KOSMOS-G training (data, init, stages 1-3, evaluation), and
the table reports every score as mean +- standard error over the seeds.

    python -m training.toy_world.study --out runs/toy_study --jobs 3 --threads 1   # 3 seeds side by side (times: docs/evaluation.md)
    python -m training.toy_world.study --out runs/toy_study_sdxl --sdxl --jobs 3 --threads 1   # KOSMOS-G for SDXL

All seeds share one frozen base model (the shipped one, as every KOSMOS-G training shares SD1.5; with --sdxl an
SDXL-shaped one, trained once into `<out>/base` unless --base names one), so the spread is that of KOSMOS-G's own
training: its data draw, initialisation and training randomness. The base model's own evaluation conditions (told
the words, text only) are therefore the same for every seed: they are evaluated once, into `<out>/base_conditions/`.
Each seed's run folder is a complete `training.toy_world.run` output (`<out>/seed_<k>/`), resumable like it; the
study writes `study.json` and `study.md` (the README's table) into `<out>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch

from training.evaluation.report import write_json
from training.sd15 import SDXL

from .base_model import SHIPPED_BASE, train_base_model
from .evaluate import (
    ATTRIBUTE_COLUMNS,
    BASE_CONDITIONS,
    CHANCE_ENTITY_EXACT,
    CHANCE_SUBJECT_FIDELITY,
    CONDITIONS,
    TABLE_COLUMNS,
    TWO_ENTITY_COLUMNS,
    evaluate_conditions,
)
from .run import DEFAULT_THREADS, PRESETS, ToyRunConfig, run, worker_init

log = logging.getLogger(__name__)

DEFAULT_SEEDS = (0, 1, 2)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); the error is 0 for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(per_seed: dict[int, dict], section: str = "conditions",
              metrics: list[str] | None = None) -> dict:
    """{condition: {metric: {"mean", "se", "values"}}} over the seeds' results.json contents (`section`:
    "conditions" for one-subject prompts, "two_entity" for two-subject ones)."""
    if metrics is None:
        metrics = [c for c in TABLE_COLUMNS if not c.endswith("images")] + ATTRIBUTE_COLUMNS
    table = {}
    for condition in CONDITIONS:
        table[condition] = {}
        for metric in metrics:
            values = [per_seed[s][section][condition][metric] for s in sorted(per_seed)]
            mean, se = mean_and_se(values)
            table[condition][metric] = {"mean": mean, "se": se, "values": values}
    return table


def _table(summary: dict, metrics: list[str], section: str = "table") -> list[str]:
    lines = ["| condition | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for condition, row in summary[section].items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['se']:.3f}" for m in metrics]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return lines


def study_markdown(summary: dict) -> str:
    lines = _table(summary, [c for c in TABLE_COLUMNS if not c.endswith("images")])
    lines += ["", "By attribute, seen and held-out subjects (`subject_exact`: colour and shape both right, chance "
              f"{CHANCE_ENTITY_EXACT:.3f}):", ""] + _table(summary, ATTRIBUTE_COLUMNS)
    if summary.get("two_entity"):
        lines += ["", f"Two entities, \"a <i> next to a <i> on the beach\" ({summary['images_per_condition']['two_entity']} "
                  "prompts per seed and condition; a subject counts when exactly right on its own side, chance "
                  f"{CHANCE_ENTITY_EXACT:.3f}):", ""] + _table(summary, TWO_ENTITY_COLUMNS, "two_entity")
    seeds = summary["seeds"]
    images = summary["images_per_condition"]
    return (
        f"# Toy-world study: {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}), "
        "mean ± standard error over the seeds\n\n"
        + "\n".join(lines) + "\n\n"
        f"Chance subject fidelity {CHANCE_SUBJECT_FIDELITY:.3f}. Per seed and condition {images['all']} images: "
        f"{images['seen']} of the 15 seen subjects, {images['held_out']} of the 5 held-out subjects that no KOSMOS-G "
        "stage saw. `unrelated_subject_fidelity` scores the same images against a subject sharing neither colour nor "
        "shape with the reference given. Command: `" + summary["command"] + "`.\n"
    )


def finished_results(out: str | Path, seeds: tuple[int, ...]) -> dict[int, dict]:
    """{seed: results.json} of seed runs that have finished (`<out>/seed_<k>/eval/results.json`); a missing one is
    an error that names it, so a table is never made from fewer seeds than asked."""
    per_seed = {}
    for seed in seeds:
        path = Path(out) / f"seed_{seed}" / "eval" / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"seed {seed} has no finished run: {path} is missing (run the study, or "
                                    f"`python -m training.toy_world.run --out {path.parents[1]} --seed {seed}`, first)")
        per_seed[seed] = json.loads(path.read_text(encoding="utf-8"))
    return per_seed


def study(out: str | Path, seeds: tuple[int, ...] = DEFAULT_SEEDS, cfg: ToyRunConfig | None = None,
          base: str | Path | None = None, kosmos_tokenizer: str | Path | None = None, jobs: int = 1,
          threads: int | None = None, summarize_only: bool = False) -> dict:
    """Every seed's run, then the summary. With `jobs` > 1 the seeds run in that many processes at once, each with
    `threads` torch threads: on a few cores, several one-thread runs of these small models keep the cores busier than
    one run on all of them (a seed's numbers depend on its thread count, not on what runs beside it).

    `base` None: the shipped base for an SD1.5 `cfg`; for an SDXL one (`ToyRunConfig.in_sdxl`), a base of
    `cfg.base` trained once (seed 0) into `<out>/base` and shared by the seeds. `summarize_only`: train and evaluate
    nothing, make the table from the seeds' finished runs (seeds run apart, e.g. on other machines)."""
    out = Path(out)
    cfg = cfg or ToyRunConfig.full()
    if summarize_only:
        return _summarize(out, seeds, finished_results(out, seeds))
    if base is None and cfg.base.kind == SDXL:
        base = out / "base"
        if not (base / "model_index.json").is_file():
            # at the toy world's fixed thread count (reproducible weights), whatever each seed's runs use
            log.info("training the shared SDXL-shaped base model into %s", base)
            before = torch.get_num_threads()
            train_base_model(base, cfg.base, seed=0, threads=DEFAULT_THREADS)
            torch.set_num_threads(before)
    elif base is None:
        base = SHIPPED_BASE
    per_seed = {}
    # The base model's own conditions (its prompts, references and noise fixed) are evaluated once for all seeds.
    shared = out / "base_conditions"
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # one more process than seeds at once: it evaluates the shared base conditions while the seeds train
        with ProcessPoolExecutor(jobs + 1, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init,
                                 initargs=(threads or 1,)) as pool:
            base_job = pool.submit(evaluate_conditions, BASE_CONDITIONS, base, {}, shared, cfg.eval,
                                   cfg.base.image_size)
            futures = {seed: pool.submit(run, out / f"seed_{seed}", replace(cfg, seed=seed), kosmos_tokenizer, base,
                                         shared) for seed in seeds}
            base_job.result()
            per_seed = {seed: future.result() for seed, future in futures.items()}
    else:
        for seed in seeds:
            log.info("seed %d of %s", seed, list(seeds))
            per_seed[seed] = run(out / f"seed_{seed}", replace(cfg, seed=seed), kosmos_tokenizer, base, shared)
    return _summarize(out, seeds, per_seed)


def _summarize(out: Path, seeds: tuple[int, ...], per_seed: dict[int, dict]) -> dict:
    """The study's table over the seeds' results, written to `<out>/study.json` and `study.md`."""
    first = per_seed[seeds[0]]["conditions"]["after_stage3_image"]
    summary = {
        "seeds": list(seeds),
        "table": aggregate(per_seed),
        "two_entity": (aggregate(per_seed, "two_entity", TWO_ENTITY_COLUMNS)
                       if per_seed[seeds[0]]["two_entity"] else {}),
        "images_per_condition": {"all": first["images"], "seen": first["seen_images"],
                                 "held_out": first["held_out_images"],
                                 "two_entity": per_seed[seeds[0]]["sampling"]["two_entity_images_per_condition"]},
        "chance_subject_fidelity": CHANCE_SUBJECT_FIDELITY,
        "command": " ".join(["python", "-m", "training.toy_world.study", *sys.argv[1:]]),
    }
    write_json(summary, out / "study.json")
    (out / "study.md").write_text(study_markdown(summary), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    from .run import add_recipe_options, add_thread_option, apply_recipe_options, set_threads

    parser = argparse.ArgumentParser(prog="python -m training.toy_world.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/toy_study", help="output folder (default runs/toy_study)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="training seeds (default 0 1 2)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="stage lengths of each run (default full; smoke for a quick check)")
    parser.add_argument("--base", default=None,
                        help="frozen base model folder shared by every seed (default: the shipped one; with --sdxl "
                             "an SDXL-shaped one trained into <out>/base first)")
    parser.add_argument("--sdxl", action="store_true",
                        help="KOSMOS-G for SDXL: every seed's stages 2-3 against an SDXL-shaped toy base")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: make the table from the seeds' finished runs in --out")
    add_thread_option(parser)
    add_recipe_options(parser)
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, each in its own process with --threads threads (default 1: one "
                             "after the other; --jobs 3 --threads 1 on a 2-core CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    cfg = apply_recipe_options(PRESETS[args.preset](), args)
    summary = study(args.out, tuple(args.seeds), cfg.in_sdxl() if args.sdxl else cfg, args.base, jobs=args.jobs,
                    threads=args.threads, summarize_only=args.summarize)
    sys.stdout.write(study_markdown(summary))


if __name__ == "__main__":
    main()
