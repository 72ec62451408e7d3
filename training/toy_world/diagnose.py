"""What a toy-world KOSMOS-G has learned at each stage, read from the model itself (no image generation).

    python -m training.toy_world.diagnose --run runs/toy_world      # prints a table, writes <run>/diagnose.json

* caption choice (every stage): after a subject's picture, which of the 20 attribute captions ("<image> a red round
  toy on the grass", stage 1's image-then-caption layout) does the MLLM find the most likely? Accuracy over the 20
  subjects and over the 5 held-out ones alone (`_held_out`), shown as a scene and as the white-background cut-out
  the evaluation uses; chance 0.05. Stage 1 must
  teach this: an MLLM that cannot tell subjects apart from their pictures gives stage 3 nothing to carry.
* conditioning spread (stages with an AlignerNet trained, 2 and 3): the standard deviation of the (77, C)
  conditioning across the 20 subjects' reference images ("a <i> on the grass"), averaged over its elements, next to
  the same across the 5 places ("a toy on the beach") and across the 20 described subjects ("a red round toy on the
  grass"). Near zero across images means the picture does not reach the U-Net.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from training.cli import setup_logging
from training.evaluation.report import markdown_table, write_json

from .scenes import PLACES, Scene, all_subjects, is_held_out, reference_image, render

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "stage3")
PROBE_PLACE = "on the grass"


def _pictures(kind: str) -> list:
    if kind == "scene":
        return [render(Scene(s, PROBE_PLACE, 0.5, 0.5), 64) for s in all_subjects()]
    return [reference_image(s, cutout=True) for s in all_subjects()]


@torch.no_grad()
def caption_choice_accuracy(model, kind: str = "cutout") -> dict[str, float]:
    """Share of the subjects whose own attribute caption is the most likely of the 20 after their picture: over all
    20 ("all"), the 15 seen ones and the 5 held out of every KOSMOS-G stage ("held_out": whether the MLLM reads a
    colour-shape combination it never saw)."""
    from kosmos_g_core.prompt import InterleavedPrompt, PromptImage

    subjects = all_subjects()
    captions = [f"a {s.description()} toy {PROBE_PLACE}" for s in subjects]
    correct = []
    for i, picture in enumerate(_pictures(kind)):
        batch = model.collate([InterleavedPrompt(("", PromptImage(picture), c)) for c in captions])
        tokens = batch.tokens.to(model.device)
        image_mask = batch.image_mask.to(model.device)
        hidden = model.mllm_forward(tokens, model.encode_images(batch.pixels.to(model.device, model.dtype)),
                                    image_mask)  # (20, T, D)
        logp = torch.log_softmax(model.mllm.logits(hidden[:, :-1]).float(), -1)  # (20, T-1, vocab)
        logp = logp.gather(-1, tokens[:, 1:, None])[..., 0]  # (20, T-1): log p of each next token
        text = (tokens[:, 1:] != model.tokenizer.PAD) & ~image_mask[:, 1:]  # the caption's own tokens
        correct.append(int((logp * text).sum(1).argmax()) == i)
    held_out = [is_held_out(s) for s in subjects]

    def share(keep: bool | None) -> float:
        picked = [c for c, h in zip(correct, held_out, strict=True) if keep is None or h == keep]
        return sum(picked) / len(picked)

    return {"all": share(None), "seen": share(False), "held_out": share(True)}


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


def diagnose_run(run_dir: str | Path) -> dict:
    """Both diagnostics for every stage export found under `run_dir` (a `training.toy_world.run` folder)."""
    from kosmos_g_core.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
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
        if stage != "stage1":  # stage 1's AlignerNet is still the random one of the init
            row |= {f"spread_{k}": v for k, v in conditioning_spread(model).items()}
        results[stage] = row
        log.info("%s: %s", stage, row)
    if not results:
        raise FileNotFoundError(f"no stage export (stage1/export.safetensors ...) under {run_dir}: point --run at "
                                "the folder of a `python -m training.toy_world.run` run")
    write_json({"stages": results, "chance_caption_choice": 1 / len(all_subjects())}, run_dir / "diagnose.json")
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
