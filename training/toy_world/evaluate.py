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

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

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


def _all_conditions(model2, model3, text: BaseText, scenes, settings: EvalSettings) -> dict[str, Conditions]:
    """{condition: Conditions} of the same scenes under every condition of CONDITIONS."""
    return {
        "after_stage3_image": _kosmos_conditions(model3, scenes, True, settings),
        "after_stage3_text": _kosmos_conditions(model3, scenes, False, settings),
        "before_stage3_image": _kosmos_conditions(model2, scenes, True, settings),
        "base_text": _base_conditions(text, scenes, described=False),
        "base_text_described": _base_conditions(text, scenes, described=True),
    }


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


def evaluate_run(base_dir: Path, stage2_export: Path, stage3_export: Path, out_dir: Path,
                 settings: EvalSettings = EvalSettings(), resolution: int = 32) -> dict:
    from kosmos_g_core.checkpoint import load_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = DiffusionSampler.from_folder(base_dir, "dpmsolver++")
    text = load_base_text(base_dir)
    model2 = load_checkpoint(stage2_export, dtype=torch.float32).eval()
    model3 = load_checkpoint(stage3_export, dtype=torch.float32).eval()
    pairs = _pairs(settings.repeats, settings.pairs)
    singles = [Scene(s, p, 0.5, 0.5) for s, p in pairs]
    doubles = two_entity_cases(settings.two_entity)
    subjects = [s for s, _ in pairs]
    places = [p for _, p in pairs]
    scores, images, pair_scores, pair_images = {}, {}, {}, {}
    for name, conditions in _all_conditions(model2, model3, text, singles, settings).items():
        images[name] = _generate(sampler, conditions, settings, resolution)
        scores[name] = condition_scores(images[name], subjects, places)
        log.info("%s: %s", name, scores[name])
    if doubles:
        for name, conditions in _all_conditions(model2, model3, text, doubles, settings).items():
            pair_images[name] = _generate(sampler, conditions, settings, resolution)
            pair_scores[name] = two_entity_scores(pair_images[name], doubles)
            log.info("two entities, %s: %s", name, pair_scores[name])
    results = {
        "conditions": scores,
        "two_entity": pair_scores,
        "chance_subject_fidelity": CHANCE_SUBJECT_FIDELITY,
        "chance_entity_exact": CHANCE_ENTITY_EXACT,
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
# Where the held-out gap comes from: each attribute on its own, seen vs held-out subjects.
ATTRIBUTE_COLUMNS = ["seen_colour_accuracy", "held_out_colour_accuracy", "seen_shape_accuracy",
                     "held_out_shape_accuracy"]


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
