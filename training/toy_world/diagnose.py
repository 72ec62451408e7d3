"""What a toy-world KOSMOS-G has learned at each stage, read from the model itself (no image generation).

    python -m training.toy_world.diagnose --run runs/toy_world      # prints a table, writes <run>/diagnose.json

* caption choice (every stage): after a subject's picture, which of the 20 attribute captions ("<image> a red round
  toy on the grass", stage 1's default captions) does the MLLM find the most likely? Over the 20 subjects and the 5
  held-out ones alone (`_held_out`); chance 0.05. A held-out caption was never written, so the language model's
  prior weighs against it: hence also
* attribute choice (every stage): after a subject's picture, which colour word ("<image> a red toy on the grass",
  stage 1's image-then-caption layout) and which shape word does the MLLM find the most likely? Accuracy per
  attribute over the 20 subjects and over the 5 held-out ones alone (`_held_out`), shown as a scene and as the
  white-background cut-out the evaluation uses; chance 0.2 (colour) and 0.25 (shape). Stage 1 must teach this: an
  MLLM that cannot tell subjects apart from their pictures gives stage 3 nothing to carry.
* conditioning spread (stages with an AlignerNet trained, 2 and 3): the standard deviation of the (77, C)
  conditioning across the 20 subjects' reference images ("a <i> on the grass"), averaged over its elements, next to
  the same across the 5 places ("a toy on the beach") and across the 20 described subjects ("a red round toy on the
  grass"). Near zero across images means the picture does not reach the U-Net.
* conditioning routing (stages 2 and 3): whether an image prompt's conditioning is nearest to its own words'
  ("a red round toy ..."), and for two subjects nearer to the words in their order than swapped
  (`conditioning_routing`).
* two-subject caption alignment (stages 2 and 3): how close M(MLLM("a red round toy next to a cyan square block
  ...")) is to the base text encoder's output, and whether it keeps the subjects' order, which tells the frozen
  U-Net which one goes left (`pair_caption_alignment`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from training.cli import setup_logging
from training.evaluation.report import markdown_table, write_json

from .evaluate import image_prompt, two_entity_cases
from .scenes import ATTRIBUTES, PLACES, Scene, all_subjects, is_held_out, reference_image, render

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "stage3")
PROBE_PLACE = "on the grass"


def _pictures(kind: str) -> list:
    if kind == "scene":
        return [render(Scene(s, PROBE_PLACE, 0.5, 0.5), 64) for s in all_subjects()]
    return [reference_image(s, cutout=True) for s in all_subjects()]


def _caption_log_likelihoods(model, picture, captions: list[str]) -> torch.Tensor:
    """(len(captions),) summed log p of each caption's own tokens after `picture`, in stage 1's image-then-caption
    layout."""
    from kosmos_g_core.prompt import InterleavedPrompt, PromptImage

    batch = model.collate([InterleavedPrompt(("", PromptImage(picture), c)) for c in captions])
    tokens = batch.tokens.to(model.device)
    image_mask = batch.image_mask.to(model.device)
    hidden = model.mllm_forward(tokens, model.encode_images(batch.pixels.to(model.device, model.dtype)),
                                image_mask)  # (N, T, D)
    logp = torch.log_softmax(model.mllm.logits(hidden[:, :-1]).float(), -1)  # (N, T-1, vocab)
    logp = logp.gather(-1, tokens[:, 1:, None])[..., 0]  # (N, T-1): log p of each next token
    text = (tokens[:, 1:] != model.tokenizer.PAD) & ~image_mask[:, 1:]  # the caption's own tokens
    return (logp * text).sum(1)


@torch.no_grad()
def caption_choice_accuracy(model, kind: str = "cutout") -> dict[str, float]:
    """Share of the subjects whose own attribute caption ("a red round toy on the grass", as stage 1 is trained by
    default) is the most likely of the 20 after their picture: over all 20 ("all"), the 15 seen ones and the 5 held
    out of every KOSMOS-G stage ("held_out"). A held-out caption was never written, so the language model's prior
    over colour-shape pairs weighs against it whatever the picture shows; attribute_choice_accuracy has no prior."""
    subjects = all_subjects()
    captions = [f"a {s.description()} toy {PROBE_PLACE}" for s in subjects]
    correct = [int(_caption_log_likelihoods(model, picture, captions).argmax()) == i
               for i, picture in enumerate(_pictures(kind))]
    held_out = [is_held_out(s) for s in subjects]

    def share(keep: bool | None) -> float:
        picked = [c for c, h in zip(correct, held_out, strict=True) if keep is None or h == keep]
        return sum(picked) / len(picked)

    return {"all": share(None), "seen": share(False), "held_out": share(True)}


@torch.no_grad()
def attribute_choice_accuracy(model, kind: str = "cutout") -> dict[str, float]:
    """For each attribute, the share of the subjects whose own word is the most likely after their picture
    ("<image> a red toy on the grass" against the other colours; "... a round toy ..." against the other shapes):
    over all 20 subjects and over the 5 held out of every KOSMOS-G stage (whether the MLLM reads the colour and the
    shape of a combination it never saw). Captions naming one attribute, as stage 1 is trained on, so no language
    prior over colour-shape pairs enters the choice."""
    subjects = all_subjects()
    held_out = [is_held_out(s) for s in subjects]
    result: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        words = sorted({s.description(attribute) for s in subjects})
        captions = [f"a {w} toy {PROBE_PLACE}" for w in words]
        correct = [words[int(_caption_log_likelihoods(model, picture, captions).argmax())] == s.description(attribute)
                   for s, picture in zip(subjects, _pictures(kind), strict=True)]
        result[f"{attribute}_all"] = sum(correct) / len(correct)
        result[f"{attribute}_held_out"] = (sum(c for c, h in zip(correct, held_out, strict=True) if h)
                                           / sum(held_out))
    return result


@torch.no_grad()
def conditioning_spread(model) -> dict[str, float]:
    """Mean over the (77, C) elements of the std across prompts that differ only in the image / place / words."""
    from kosmos_g_core.prompt import InterleavedPrompt

    def spread(prompts) -> float:
        return float(model.encode(prompts).cond.float().std(0).mean())

    subjects = all_subjects()
    return {
        "across_images": spread([InterleavedPrompt.from_text(f"a <i> {PROBE_PLACE}", images=[p])
                                 for p in _pictures("cutout")]),
        "across_places": spread([f"a toy {p}" for p in PLACES]),
        "across_described_subjects": spread([f"a {s.description()} toy {PROBE_PLACE}" for s in subjects]),
    }


@torch.no_grad()
def conditioning_routing(model, pairs: int = 60) -> dict[str, float]:
    """Does an image prompt's (77, C) conditioning stand where its words' would, and in their order? The frozen
    U-Net only learned to draw from the text encoder's conditioning, which stage 2 taught AlignerNet to copy.

    * one subject: the share of the subjects whose "a <i> on the grass" conditioning (the cut-out) is nearest, in
      mean squared distance, to their own described caption's ("a red round toy on the grass") among the 20 (chance
      0.05); over all 20 and the 5 held-out ones.
    * two subjects (`pairs` of the evaluation's two-entity cases): the share whose "a <i> next to a <i> on the ..."
      conditioning is nearer to "a red round toy next to a cyan square block on the ..." than to the same words with
      the subjects swapped (chance 0.5): is the first image routed where the first-named subject's words go?"""
    from kosmos_g_core.prompt import InterleavedPrompt

    def cond(prompts) -> torch.Tensor:
        return model.encode(prompts).cond.float()  # (N, 77, C)

    subjects = all_subjects()
    pictures = dict(zip(subjects, _pictures("cutout"), strict=True))
    images = cond([InterleavedPrompt.from_text(f"a <i> {PROBE_PLACE}", images=[pictures[s]]) for s in subjects])
    words = cond([f"a {s.description()} toy {PROBE_PLACE}" for s in subjects])
    nearest = torch.cdist(images.flatten(1), words.flatten(1)).argmin(1)  # (20,)
    own = [int(j) == i for i, j in enumerate(nearest)]
    held = [i for i, s in enumerate(subjects) if is_held_out(s)]
    cases = two_entity_cases(pairs)
    pair_images = cond([InterleavedPrompt.from_text(image_prompt(c), images=[pictures[s] for s in c.subjects])
                        for c in cases])
    in_order = cond([c.caption(describe=True) for c in cases])
    swapped = cond([replace(c, left=c.right, right=c.left).caption(describe=True) for c in cases])
    nearer = ((pair_images - in_order).pow(2).mean((1, 2)) < (pair_images - swapped).pow(2).mean((1, 2))).float()
    return {"one_subject": sum(own) / len(own), "one_subject_held_out": sum(own[i] for i in held) / len(held),
            "pair_order": int(nearer.sum()) / len(cases)}


@torch.no_grad()
def pair_caption_alignment(model, base_text, pairs: int = 100) -> dict[str, float]:
    """How well stage 2's alignment holds on two-subject captions ("a red round toy next to a cyan square block on
    the ...", the evaluation's two-entity cases), against the frozen base's own text encoder (`base_text`):

    * `mse`: mean squared distance of M(MLLM(caption)) from the text encoder's (77, C) output;
    * `order`: the share of captions whose conditioning is nearer to the text encoder's output for them than for the
      same words with the subjects swapped (chance 0.5);
    * `order_spread`: how far apart the conditioning puts a caption and its swap, over how far apart the text encoder
      puts them (1: the order difference the U-Net reads is kept whole; 0: lost)."""
    cases = two_entity_cases(pairs)
    in_order = [c.caption(describe=True) for c in cases]
    swapped = [replace(c, left=c.right, right=c.left).caption(describe=True) for c in cases]
    target, target_swapped = base_text.encode(in_order)[0].float(), base_text.encode(swapped)[0].float()
    ours, ours_swapped = model.encode(in_order).cond.float(), model.encode(swapped).cond.float()

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).mean((1, 2))  # (pairs,)

    off = distance(ours, target)
    return {"mse": float(off.mean()),
            "order": int((off < distance(ours, target_swapped)).sum()) / len(cases),
            "order_spread": float(distance(ours, ours_swapped).mean() / distance(target, target_swapped).mean())}


def diagnose_run(run_dir: str | Path) -> dict:
    """The diagnostics for every stage export found under `run_dir` (a `training.toy_world.run` folder)."""
    from kosmos_g_core.checkpoint import load_checkpoint

    from .base_model import load_base_text

    run_dir = Path(run_dir)
    base_text = load_base_text(run_dir / "base") if (run_dir / "base").is_dir() else None
    results: dict[str, dict] = {}
    for stage in STAGES:
        export = run_dir / stage / "export.safetensors"
        if not export.is_file():
            continue
        model = load_checkpoint(export, dtype=torch.float32).eval()
        row = {}
        for kind in ("scene", "cutout"):
            choice = caption_choice_accuracy(model, kind)
            row |= {f"caption_choice_{kind}": choice["all"], f"caption_choice_{kind}_held_out": choice["held_out"]}
            row |= {f"choice_{kind}_{k}": v for k, v in attribute_choice_accuracy(model, kind).items()}
        if stage != "stage1":  # stage 1's AlignerNet is still the random one of the init
            row |= {f"spread_{k}": v for k, v in conditioning_spread(model).items()}
            row |= {f"routing_{k}": v for k, v in conditioning_routing(model).items()}
            if base_text is not None:
                row |= {f"pair_caption_{k}": v for k, v in pair_caption_alignment(model, base_text).items()}
        results[stage] = row
        log.info("%s: %s", stage, row)
    if not results:
        raise FileNotFoundError(f"no stage export (stage1/export.safetensors ...) under {run_dir}: point --run at "
                                "the folder of a `python -m training.toy_world.run` run")
    chance = {"caption": 1 / len(all_subjects())}
    chance |= {a: 1 / len({s.description(a) for s in all_subjects()}) for a in ATTRIBUTES}
    write_json({"stages": results, "chance_choice": chance}, run_dir / "diagnose.json")
    return results


def format_table(results: dict) -> str:
    return markdown_table(results, sorted({k for row in results.values() for k in row}), first="stage")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.toy_world.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/toy_world", help="folder of a toy-world run")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.stdout.write(format_table(diagnose_run(args.run)))


if __name__ == "__main__":
    main()
