"""DreamBench generation and scoring with KOSMOS-G's protocol (see dreambench_protocol.py for the prompts).

Generation writes `samples/<subject>/<prompt:02d>_<k>.png`, `generation.json` (how they were made) and
`manifest.json`; it resumes, skipping images already there. Scoring reads the manifest, so images made elsewhere
(e.g. a ComfyUI batch) can be scored by writing the same manifest.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from training.cli import progress

from .dreambench_protocol import DreamBenchSubject
from .encoders import ClipEncoder, DinoEncoder
from .images import load_rgb
from .report import bar_chart, claim_output, image_grid, markdown_table, save_image, write_json
from .sampler import DiffusionSampler, SamplerSettings, to_pil
from .similarity import image_similarity, text_similarity

log = logging.getLogger(__name__)

SCORES = ("DINO", "CLIP-I", "CLIP-T")
PAPER = {"DINO": 0.694, "CLIP-I": 0.847, "CLIP-T": 0.287}  # KOSMOS-G zero-shot, single image


def _seed(seed: int, subject: str, prompt_index: int) -> int:
    """One generator per (subject, prompt), from the subject's name: any subset or order of subjects, and a resumed
    run, reproduces the same images."""
    return seed * 1_000_003 + zlib.crc32(subject.encode()) % 1_000_000 * 1000 + prompt_index


def generate(
    model, sampler: DiffusionSampler, subjects: Sequence[DreamBenchSubject], out_dir: str | Path,
    settings: SamplerSettings, samples_per_prompt: int = 4, seed: int = 0, identity: Mapping | None = None,
) -> list[dict]:
    """Sample `samples_per_prompt` images for every (subject, prompt); returns the manifest entries.

    Resumable: a (subject, prompt) whose images are all in `out_dir` is skipped (not even encoded), so an interrupted
    run continues where it stopped and ends with the same images as an uninterrupted one. `identity` (what made the
    images: checkpoint, SD1.5 folder...) joins the settings in out_dir/generation.json, which a resumed run must match.
    """
    from kosmos_g_core.prompt import InterleavedPrompt

    out = Path(out_dir)
    claim_output(out, {"benchmark": "dreambench", "settings": asdict(settings),
                       "samples_per_prompt": samples_per_prompt, "seed": seed, **(identity or {})})
    entries: list[dict] = []
    jobs = [(subject, prompt) for subject in subjects for prompt in subject.prompts]
    made = 0
    references: dict[str, object] = {}
    for subject, prompt in progress(jobs, desc="DreamBench generation (subject, prompt)"):
        folder = out / "samples" / subject.name
        paths = [folder / f"{prompt.index:02d}_{k}.png" for k in range(samples_per_prompt)]
        entries += [{
            "subject": subject.name, "class": subject.class_name, "prompt_index": prompt.index,
            "input_prompt": prompt.kosmos, "scored_prompt": prompt.scored,
            "reference": str(subject.reference), "file": str(path.relative_to(out)),
        } for path in paths]
        if all(p.is_file() for p in paths):
            continue
        if subject.name not in references:
            references[subject.name] = load_rgb(subject.reference)
        encoded = model.encode(InterleavedPrompt.from_text(prompt.kosmos, images=[references[subject.name]]))
        cond = encoded.cond.expand(samples_per_prompt, -1, -1)
        generator = torch.Generator().manual_seed(_seed(seed, subject.name, prompt.index))
        images = sampler.sample(cond, encoded.uncond[:1], settings.steps, settings.guidance,
                                settings.resolution, generator)
        folder.mkdir(parents=True, exist_ok=True)
        for img, path in zip(to_pil(images), paths, strict=True):
            if not path.is_file():  # the pair's other images are already there, and equal to these
                save_image(img, path)
        made += 1
    log.info("DreamBench: %d (subject, prompt) pairs generated, %d already in %s", made, len(jobs) - made, out)
    write_json({"settings": asdict(settings), "samples_per_prompt": samples_per_prompt, "seed": seed,
                "images": entries}, out / "manifest.json")
    return entries


def score(
    entries: Sequence[dict], root: str | Path, dino: DinoEncoder | None, clip: ClipEncoder | None,
) -> dict:
    """Per-subject and overall DINO / CLIP-I / CLIP-T. Overall = mean over all images (equal counts per subject)."""
    root = Path(root)
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        by_subject[e["subject"]].append(e)
    per_subject: dict[str, dict[str, float]] = {}
    weighted: dict[str, float] = defaultdict(float)
    total = 0
    for name, items in progress(list(by_subject.items()), desc="DreamBench scoring (subjects)"):
        generated = [load_rgb(root / e["file"]) for e in items]
        reference = [load_rgb(items[0]["reference"])]
        row: dict[str, float] = {"images": len(items)}
        if dino is not None:
            row["DINO"] = image_similarity(dino.encode(generated), dino.encode(reference), clip_at_zero=False)
        if clip is not None:
            gen_feats = clip.encode_images(generated)
            row["CLIP-I"] = image_similarity(gen_feats, clip.encode_images(reference), clip_at_zero=True)
            row["CLIP-T"] = text_similarity(gen_feats, clip.encode_texts([e["scored_prompt"] for e in items]))
        per_subject[name] = row
        for key in SCORES:
            if key in row:
                weighted[key] += row[key] * len(items)
        total += len(items)
    overall = {k: v / total for k, v in weighted.items()} | {"images": total}
    return {"per_subject": per_subject, "overall": overall}


def write_report(results: dict, entries: Sequence[dict], root: str | Path, settings: dict) -> dict[str, Path]:
    """results.json, results.md, scores_per_subject.png, samples_grid.png under `root`."""
    root = Path(root)
    columns = [c for c in SCORES if c in results["overall"]]
    files = {"json": write_json({"benchmark": "DreamBench (KOSMOS-G single-image protocol)", "settings": settings,
                                 "paper_kosmos_g": PAPER, **results}, root / "results.json")}
    rows = dict(results["per_subject"]) | {"**overall**": results["overall"], "paper (KOSMOS-G)": PAPER}
    table = markdown_table(rows, columns + ["images"])
    settings_line = ", ".join(f"{k}={v}" for k, v in settings.items())
    md = f"# DreamBench results\n\nSettings: {settings_line}\n\n{table}\n![scores](scores_per_subject.png)\n\n" \
         "![samples](samples_grid.png)\n"
    files["markdown"] = root / "results.md"
    files["markdown"].write_text(md, encoding="utf-8")
    if columns:
        files["chart"] = bar_chart(results["per_subject"], columns, root / "scores_per_subject.png",
                                   title="DreamBench scores per subject")
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        if e["file"].endswith("_0.png"):
            by_subject[e["subject"]].append(e)
    grid_rows, labels = [], []
    for name, items in by_subject.items():
        picks = items[:: max(1, len(items) // 6)][:6]
        grid_rows.append([load_rgb(items[0]["reference"])] + [load_rgb(root / e["file"]) for e in picks])
        labels.append(name)
    if grid_rows:
        files["grid"] = image_grid(grid_rows, root / "samples_grid.png", cell=96, row_labels=labels,
                                   col_labels=["reference"] + [f"prompt {i}" for i in range(1, 7)])
    return files
