"""Measure a toy-world run with the world's own scorer (scorer.py).

Every condition generates the same (subject, place) grid with the same initial noise, so the only difference
between rows of the table is the conditioning:

* `after_stage3_image`  - KOSMOS-G after stage 3, prompt "a <i> on the beach" with the subject's reference image
* `after_stage3_text`   - the same model, text only: "a toy on the beach" (what text can say about the subject)
* `before_stage3_image` - the stage-2 model (aligned, not instruction-tuned), same image prompt
* `base_text`           - the base model with its own text encoder, "a toy on the beach" (the SD1.5-style baseline)
* `base_text_described` - the base model told the subject's attribute words, "a red round toy on the beach"
                          (an upper reference: what the frozen U-Net can draw when told exactly)

Chance level of subject fidelity is (1/5 + 1/4) / 2 = 0.225 (5 colours, 4 shapes).

Every image is scored three ways: against the subject it was asked for, separately for the 15 seen subjects and the 5
held-out ones that no KOSMOS-G stage saw (`scenes.is_held_out`: the zero-shot case), and against an unrelated
subject (another colour and another shape; `control_subject`). Fidelity to the given reference far above fidelity
to an unrelated one is what shows the generation follows the image it was given, rather than a favourite subject.

Two-entity prompts ("a <i> next to a <i> on the beach", `two_entity_cases`) run through the same five conditions
(text: "a toy next to a block on the beach"; told the words: "a red round toy next to a cyan square block on the
beach"). Each half of the image is read on its own (`scorer.read_pair`) and a subject counts only when it is exactly
right (colour and shape) on the side its image was given: chance 1/20 = 0.05 per subject.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from training.evaluation.report import bar_chart, image_grid, markdown_table, write_json
from training.evaluation.sampler import DiffusionSampler, to_pil

from .base_model import BaseText, load_base_text
from .scenes import (
    COLOURS,
    PAIR_PROB,
    PLACES,
    SHAPES,
    PairScene,
    Scene,
    Subject,
    all_subjects,
    is_held_out,
    random_any_scene,
    reference_image,
)
from .scorer import score_images, score_pairs

log = logging.getLogger(__name__)

CHANCE_SUBJECT_FIDELITY = (1 / len(COLOURS) + 1 / len(SHAPES)) / 2
CHANCE_ENTITY_EXACT = 1 / (len(COLOURS) * len(SHAPES))  # one subject right in both colour and shape
CONDITIONS = ("after_stage3_image", "after_stage3_text", "before_stage3_image", "base_text", "base_text_described")
# The model each condition reads. The base model's own conditions are the same for every run on that base (its
# prompts, references and noise are fixed), so runs sharing a base can share them (evaluate_run's base_conditions).
CONDITION_MODEL = {"after_stage3_image": "stage3", "after_stage3_text": "stage3", "before_stage3_image": "stage2",
                   "base_text": "base", "base_text_described": "base"}
BASE_CONDITIONS = tuple(name for name in CONDITIONS if CONDITION_MODEL[name] == "base")


@dataclass(frozen=True)
class EvalSettings:
    steps: int = 25  # DPM-Solver++ steps
    guidance: float = 5.0
    repeats: int = 1  # images per (subject, place) pair
    seed: int = 1234
    batch: int = 50
    pairs: int = 0  # 0 = every (subject, place) pair; else an evenly spaced subset (smoke runs)
    two_entity: int = 100  # two-subject prompts ("a <i> next to a <i> on the beach"); 0 = none
    chart: bool = True  # the matplotlib bar chart (its import alone takes seconds)
    # The subject's reference picture: its white-background cut-out, or a crop with a background ("on the grass",
    # like a DreamBench photo), which can leak its place into the generation (text fidelity shows it).
    reference: str = "cutout"

    def reference_image(self, subject: Subject):
        if self.reference not in ("cutout", "crop"):
            raise ValueError(f"unknown reference style {self.reference!r}; choose 'cutout' or 'crop'")
        return reference_image(subject, cutout=self.reference == "cutout")


def control_subject(subject: Subject) -> Subject:
    """An unrelated subject: the next shape and the colour two further on, so neither attribute is shared."""
    shapes, colours = list(SHAPES), list(COLOURS)
    return Subject(shapes[(shapes.index(subject.shape) + 1) % len(shapes)],
                   colours[(colours.index(subject.colour) + 2) % len(colours)])


def condition_scores(images, subjects: list[Subject], places: list[str]) -> dict[str, float]:
    """All-subject scores, plus subject fidelity on the seen and held-out subjects and against unrelated ones."""
    out = score_images(images, subjects, places).as_dict()
    for group, keep in (("seen", False), ("held_out", True)):
        index = [i for i, s in enumerate(subjects) if is_held_out(s) == keep]
        picked = score_images([images[i] for i in index], [subjects[i] for i in index], [places[i] for i in index])
        out[f"{group}_subject_fidelity"] = picked.subject_fidelity
        out[f"{group}_colour_accuracy"] = picked.colour_accuracy
        out[f"{group}_shape_accuracy"] = picked.shape_accuracy
        out[f"{group}_subject_exact"] = picked.subject_exact
        out[f"{group}_images"] = picked.count
    out["unrelated_subject_fidelity"] = score_images(images, [control_subject(s) for s in subjects],
                                                     places).subject_fidelity
    return out


def image_prompt(scene: Scene | PairScene) -> str:
    """The caption with each class word replaced by its image, as the loader feeds it when it drops the entity
    words: "a <i> on the beach", "a <i> next to a <i> on the beach"."""
    text = scene.caption()
    for _, start, end in reversed(scene.entity_spans()):
        text = text[:start] + "<i>" + text[end:]
    return text


def text_prompt(scene: Scene | PairScene) -> str:
    """What text alone can say: "a toy on the beach", "a toy next to a block on the beach"."""
    return scene.caption()


def _pairs(repeats: int, limit: int = 0) -> list[tuple[Subject, str]]:
    pairs = [(s, p) for s in all_subjects() for p in PLACES for _ in range(repeats)]
    if limit and limit < len(pairs):
        # stride 7 is coprime with the 5 places, so a subset still mixes subjects and places
        pairs = [pairs[(i * 7) % len(pairs)] for i in range(limit)]
    return pairs


def two_entity_cases(count: int, seed: int = 4321) -> list[PairScene]:
    """`count` two-subject prompts: two different subjects of all 20 (held-out ones included) and a place, drawn
    with a fixed seed, so every run and every condition is scored on the same cases."""
    rng = random.Random(f"two_entity/{seed}")
    return [PairScene(*rng.sample(all_subjects(), 2), rng.choice(list(PLACES))) for _ in range(count)]


class Conditions(NamedTuple):
    """A condition's prompts, ready for the sampler: cond and uncond (N, 77, C) each, and for an SDXL base the pooled
    vectors (cond (N, P), uncond (N, P)); None for SD1.5."""
    cond: torch.Tensor
    uncond: torch.Tensor
    pooled: tuple[torch.Tensor, torch.Tensor] | None = None


@torch.no_grad()
def _kosmos_conditions(model, scenes, with_image: bool, settings: EvalSettings) -> Conditions:
    from kosmos_g_core.prompt import InterleavedPrompt

    def prompt(scene):
        if not with_image:
            return text_prompt(scene)
        return InterleavedPrompt.from_text(image_prompt(scene), images=[refs[s] for s in scene.subjects])

    refs = {s: settings.reference_image(s) for s in all_subjects()}
    prompts = [prompt(scene) for scene in scenes]
    conds, unconds = [], []
    for i in range(0, len(prompts), 50):
        c = model.encode(prompts[i : i + 50])
        conds.append(c.cond.float())
        unconds.append(c.uncond.float())
    cond, uncond = torch.cat(conds), torch.cat(unconds)
    if model.config.pooled_dim is None:
        return Conditions(cond, uncond)
    # SDXL: the pooled vector of each context, the null condition's for uncond (as stage 3 and the nodes make it)
    return Conditions(cond, uncond, (model.pooled(cond).float(), model.pooled(uncond).float()))


@torch.no_grad()
def _base_conditions(text: BaseText, scenes, described: bool) -> Conditions:
    captions = [scene.caption(describe=described) for scene in scenes]
    parts = [text.encode(captions[i : i + 50]) for i in range(0, len(captions), 50)]
    cond = torch.cat([context for context, _ in parts])
    uncond, uncond_pooled = text.encode([""])  # (1, 77, C), (1, P): one per prompt, so that batches slice alike
    if uncond_pooled is None:
        return Conditions(cond, uncond.expand_as(cond))
    return Conditions(cond, uncond.expand_as(cond),
                      (torch.cat([pooled for _, pooled in parts]), uncond_pooled.expand(cond.shape[0], -1)))


def _condition_prompts(name: str, models: _Models, scenes, settings: EvalSettings) -> Conditions:
    """The sampler's conditioning of `scenes` under condition `name` (the module docstring's list)."""
    kind = CONDITION_MODEL[name]
    if kind == "base":
        return _base_conditions(models.text, scenes, described=name == "base_text_described")
    return _kosmos_conditions(models.kosmos(kind), scenes, name.endswith("_image"), settings)


class _Models:
    """What the conditions read, each loaded once on first use: the base model's sampler and text side, and the
    KOSMOS-G exports by stage ("stage2", "stage3")."""

    def __init__(self, base_dir: Path, exports: dict[str, Path]):
        self.base_dir, self.exports = Path(base_dir), exports
        self._loaded: dict[str, object] = {}

    def _get(self, key: str, load):
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    @property
    def sampler(self) -> DiffusionSampler:
        return self._get("sampler", lambda: DiffusionSampler.from_folder(self.base_dir, "dpmsolver++"))

    @property
    def text(self) -> BaseText:
        return self._get("text", lambda: load_base_text(self.base_dir))

    def kosmos(self, stage: str):
        from kosmos_g_core.checkpoint import load_checkpoint

        return self._get(stage, lambda: load_checkpoint(self.exports[stage], dtype=torch.float32).eval())


def _generate(sampler: DiffusionSampler, conditions: Conditions, settings: EvalSettings, resolution: int):
    cond, uncond, pooled = conditions
    images = []
    for i in range(0, cond.shape[0], settings.batch):
        # The same generator seed per batch index in every condition: identical starting noise across conditions.
        g = torch.Generator().manual_seed(settings.seed + i)
        batch = slice(i, i + settings.batch)
        out = sampler.sample(cond[batch], uncond[batch], settings.steps, settings.guidance, resolution, g,
                             pooled=None if pooled is None else tuple(p[batch] for p in pooled))
        images += to_pil(out)
    return images


def two_entity_scores(images, scenes: list[PairScene]) -> dict[str, float]:
    """Each subject on its own side (`scorer.score_pairs`), split into prompts of two seen subjects and prompts with
    a held-out one; `swapped_entity_exact` scores the same images with the sides swapped (a model that draws both
    subjects but ignores which was named first scores the same both ways)."""
    pairs = [scene.subjects for scene in scenes]
    places = [scene.place for scene in scenes]
    out = score_pairs(images, pairs, places).as_dict()
    out["swapped_entity_exact"] = score_pairs(images, [(second, first) for first, second in pairs], places).entity_exact
    for group, keep in (("seen_pairs", False), ("held_out_pairs", True)):
        index = [i for i, pair in enumerate(pairs) if any(map(is_held_out, pair)) == keep]
        if index:
            picked = score_pairs([images[i] for i in index], [pairs[i] for i in index], [places[i] for i in index])
            out[f"{group}_entity_exact"] = picked.entity_exact
        else:
            out[f"{group}_entity_exact"] = float("nan")
        out[f"{group}_images"] = len(index)
    return out


@torch.no_grad()
def alignment_error(model, text: BaseText, count: int = 64, seed: int = 99) -> dict[str, float]:
    """Stage-2 metric on held-out captions: MSE of M(MLLM(caption)) vs the base text side's (77, C) context,
    and the same MSE for the best constant (the targets' mean), so 1 - mse / baseline is the share explained."""
    rng = random.Random(seed)
    captions = [random_any_scene(rng, PAIR_PROB).caption(describe=rng.random() < 0.5) for _ in range(count)]
    target = text.encode(captions)[0].float()
    kt = model.tokenizer
    ids = [[0] + kt.encode(c) for c in captions]
    width = max(len(x) for x in ids)
    tokens = torch.full((count, width), 1, dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.tensor(x)
    pred = model.align(model.mllm_forward(tokens.to(model.device)), tokens.to(model.device)).float().cpu()
    mse = float(torch.mean((pred - target) ** 2))
    baseline = float(torch.mean((target - target.mean(0, keepdim=True)) ** 2))
    return {"mse": mse, "constant_baseline_mse": baseline, "explained": 1.0 - mse / baseline, "captions": count}


def _cases(settings: EvalSettings) -> tuple[list[tuple[Subject, str]], list[Scene], list[PairScene]]:
    """The (subject, place) pairs, their one-subject scenes and the two-subject scenes every condition is scored on."""
    pairs = _pairs(settings.repeats, settings.pairs)
    return pairs, [Scene(s, p, 0.5, 0.5) for s, p in pairs], two_entity_cases(settings.two_entity)


def condition_fingerprint(name: str, base_dir: Path, export: Path | None, settings: EvalSettings,
                          resolution: int) -> str:
    """sha256 of everything a condition's images depend on: its name, the settings, the resolution, the torch thread
    count (the images are bit-reproducible at a fixed one), every file of the base model folder and the KOSMOS-G
    export it reads (None for the base conditions). Runs on copies of the same base share their base conditions."""
    head = {"condition": name, "settings": asdict(settings), "resolution": resolution,
            "threads": torch.get_num_threads()}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    base_dir = Path(base_dir)
    files = [(p.relative_to(base_dir).as_posix(), p) for p in sorted(base_dir.rglob("*")) if p.is_file()]
    if export is not None:
        files.append(("export", Path(export)))
    for label, path in files:
        digest.update(f"{label}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _as_array(images: list) -> torch.Tensor:
    """PIL images -> (N, H, W, 3) uint8, the bytes the scorer read."""
    return torch.stack([torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()) for image in images]) \
        if images else torch.zeros(0, dtype=torch.uint8)


def _as_images(array: torch.Tensor) -> list:
    return [Image.fromarray(a.numpy()) for a in array]


def _load_condition(path: Path, fingerprint: str) -> dict | None:
    """A condition's saved images and scores, or None when there are none for this fingerprint."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved if saved.get("fingerprint") == fingerprint else None


def evaluate_conditions(names: list[str] | tuple[str, ...], base_dir: Path, exports: dict[str, Path], folder: Path,
                        settings: EvalSettings = EvalSettings(), resolution: int = 32) -> dict[str, dict]:
    """Generate each condition of `names` into `folder/<name>.pt` (its images as uint8 and its fingerprint), skipping
    those already there with the same fingerprint (`condition_fingerprint`); `exports` maps "stage2" / "stage3" to
    the KOSMOS-G exports the conditions read. Any process can run it: `evaluate_run`, or a study's job for its shared
    base conditions. Returns {name: what is saved for it, plus "read_back": whether it was already there}."""
    folder.mkdir(parents=True, exist_ok=True)
    models = _Models(base_dir, exports)
    _, singles, doubles = _cases(settings)
    saved = {}
    for name in names:
        kind = CONDITION_MODEL[name]
        path = folder / f"{name}.pt"
        fingerprint = condition_fingerprint(name, base_dir, None if kind == "base" else exports[kind], settings,
                                            resolution)
        saved[name] = _load_condition(path, fingerprint)
        if saved[name] is not None:
            log.info("%s: already evaluated in %s", name, path)
            saved[name]["read_back"] = True
            continue
        start = time.time()
        images = _generate(models.sampler, _condition_prompts(name, models, singles, settings), settings, resolution)
        pair_images = []
        if doubles:
            pair_images = _generate(models.sampler, _condition_prompts(name, models, doubles, settings), settings,
                                    resolution)
        partial = path.with_suffix(".pt.partial")  # renamed when complete: a killed run never leaves half a file
        saved[name] = {"fingerprint": fingerprint, "images": _as_array(images), "pair_images": _as_array(pair_images)}
        torch.save(saved[name], partial)
        os.replace(partial, path)
        saved[name]["read_back"] = False
        log.info("%s evaluated in %.0fs", name, time.time() - start)
    return saved


def evaluate_run(base_dir: Path, stage2_export: Path, stage3_export: Path, out_dir: Path,
                 settings: EvalSettings = EvalSettings(), resolution: int = 32,
                 base_conditions: Path | None = None) -> dict:
    """Every condition (those already evaluated, by an earlier run or a study's shared job, are read back), then
    results.json, results.md and the figures in `out_dir`. The conditions live in `out_dir/conditions/`, the base
    model's own in `base_conditions` when given: a folder shared by runs on the same base, as a study's seeds are."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exports = {"stage2": Path(stage2_export), "stage3": Path(stage3_export)}
    folders = {name: base_conditions if base_conditions is not None and CONDITION_MODEL[name] == "base"
               else out_dir / "conditions" for name in CONDITIONS}
    saved = {}
    for folder in dict.fromkeys(folders.values()):
        saved |= evaluate_conditions([n for n in CONDITIONS if folders[n] == folder], base_dir, exports, folder,
                                     settings, resolution)
    pairs, _, doubles = _cases(settings)
    subjects, places = [s for s, _ in pairs], [p for _, p in pairs]
    # Scored here from the saved images, whoever generated them: a change of the scorer reaches every saved condition.
    scores, images, pair_scores, pair_images = {}, {}, {}, {}
    for name in CONDITIONS:
        images[name] = _as_images(saved[name]["images"])
        scores[name] = condition_scores(images[name], subjects, places)
        log.info("%s: %s", name, scores[name])
        if doubles:
            pair_images[name] = _as_images(saved[name]["pair_images"])
            pair_scores[name] = two_entity_scores(pair_images[name], doubles)
            log.info("two entities, %s: %s", name, pair_scores[name])
    models = _Models(base_dir, exports)
    text, model2, model3 = models.text, models.kosmos("stage2"), models.kosmos("stage3")
    results = {
        "conditions": scores,
        "two_entity": pair_scores,
        "chance_subject_fidelity": CHANCE_SUBJECT_FIDELITY,
        "chance_entity_exact": CHANCE_ENTITY_EXACT,
        # the conditions this evaluation generated; the others' saved images were read back and scored again
        "generated_conditions": [name for name in CONDITIONS if not saved[name]["read_back"]],
        "stage2_alignment": {"stage2": alignment_error(model2, text), "stage3": alignment_error(model3, text)},
        "sampling": {"scheduler": "DPM-Solver++ (2M)", "steps": settings.steps, "guidance": settings.guidance,
                     "resolution": resolution, "seed": settings.seed, "images_per_condition": len(pairs),
                     "two_entity_images_per_condition": len(doubles), "reference": settings.reference},
    }
    write_json(results, out_dir / "results.json")
    _write_figures(out_dir, images, pairs, scores, settings)
    if doubles:
        _write_pair_grid(out_dir, pair_images, doubles, settings)
    (out_dir / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def _grid_rows(pairs: list[tuple[Subject, str]], count: int = 10) -> list[int]:
    """Indices of `count` pairs for the sample grid: subject 7k mod 20 and place k mod 5 for row k, which covers all
    4 shapes, 5 colours and 5 places in 10 rows; pairs missing from a subset (smoke runs) are filled in order."""
    first = {pair: i for i, pair in reversed(list(enumerate(pairs)))}
    subjects, places = all_subjects(), list(PLACES)
    wanted = [(subjects[(7 * k) % len(subjects)], places[k % len(places)]) for k in range(count)]
    rows = [first[w] for w in wanted if w in first]
    rows += [i for i in sorted(set(first.values())) if i not in rows][: max(0, count - len(rows))]
    return rows


def _write_figures(out_dir: Path, images: dict, pairs, scores: dict, settings: EvalSettings) -> None:
    rows, labels = [], []
    for i in _grid_rows(pairs):
        subject, place = pairs[i]
        rows.append([settings.reference_image(subject)] + [images[c][i] for c in CONDITIONS])
        labels.append(f"{subject.name}{' (held out)' if is_held_out(subject) else ''}, {place}")
    image_grid(rows, out_dir / "samples_grid.png", cell=64, row_labels=labels,
               col_labels=["ref", "S3 <i>", "S3 text", "S2 <i>", "base", "base+attr"])
    if not settings.chart:
        return
    bar_chart({c: scores[c] for c in CONDITIONS}, ["subject_fidelity", "colour_accuracy", "shape_accuracy",
                                                   "text_fidelity"], out_dir / "scores.png",
              title="toy world: scores per condition")


TABLE_COLUMNS = ["seen_subject_fidelity", "held_out_subject_fidelity", "unrelated_subject_fidelity",
                 "colour_accuracy", "shape_accuracy", "text_fidelity", "images"]
# Where the held-out gap comes from: each attribute on its own, seen vs held-out subjects, and both at once (a model
# that copies the colour onto a seen shape every time has subject fidelity 0.5 and subject_exact 0; chance 0.05).
ATTRIBUTE_COLUMNS = ["seen_colour_accuracy", "held_out_colour_accuracy", "seen_shape_accuracy",
                     "held_out_shape_accuracy", "seen_subject_exact", "held_out_subject_exact"]


def _write_pair_grid(out_dir: Path, images: dict, scenes: list[PairScene], settings: EvalSettings,
                     count: int = 8) -> None:
    rows, labels = [], []
    for i, scene in enumerate(scenes[:count]):
        rows.append([settings.reference_image(scene.left), settings.reference_image(scene.right)]
                    + [images[c][i] for c in CONDITIONS])
        labels.append(f"{scene.left.name} | {scene.right.name}, {scene.place}")
    image_grid(rows, out_dir / "two_entity_grid.png", cell=64, row_labels=labels,
               col_labels=["left ref", "right ref", "S3 <i><i>", "S3 text", "S2 <i><i>", "base", "base+attr"])


TWO_ENTITY_COLUMNS = ["entity_exact", "swapped_entity_exact", "both_exact", "seen_pairs_entity_exact",
                      "held_out_pairs_entity_exact", "entity_fidelity", "text_fidelity"]


def results_markdown(results: dict) -> str:
    columns = TABLE_COLUMNS
    table = markdown_table(results["conditions"], columns, first="condition")
    a2 = results["stage2_alignment"]["stage2"]
    s = results["sampling"]
    return (
        "# Toy-world results\n\n" + table +
        f"\nChance subject fidelity: {results['chance_subject_fidelity']:.3f}. "
        f"Stage-2 alignment on {a2['captions']} held-out captions: MSE {a2['mse']:.4f} vs {a2['constant_baseline_mse']:.4f} "
        f"for the best constant ({a2['explained']:.1%} explained).\n"
        f"Sampling: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance']}, {s['resolution']} px, "
        f"seed {s['seed']}.\n\n![samples](samples_grid.png)\n\n![scores](scores.png)\n"
        + (f"\n## Two entities: \"a <i> next to a <i> ...\" ({s['two_entity_images_per_condition']} images per "
           f"condition)\n\n" + markdown_table(results["two_entity"], TWO_ENTITY_COLUMNS, first="condition")
           + f"\nChance entity_exact {results['chance_entity_exact']:.3f} (one subject right in colour and shape).\n"
           "\n![two entities](two_entity_grid.png)\n" if results["two_entity"] else "")
    )
