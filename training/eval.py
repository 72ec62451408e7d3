r"""Evaluate a KOSMOS-G pack checkpoint: DreamBench, MS-COCO zero-shot FID and the layout metrics.

    python -m training.eval dreambench --checkpoint kosmos-g.safetensors --sd15 models/sd15 \
        --dreambench data/dreambench --dino models/dino-vits16 --clip models/clip-vit-base-patch32 --out runs/eval/db
    python -m training.eval dreambench --score-only --out runs/eval/db --dino ... --clip ...   # re-score images
    python -m training.eval coco-fid --checkpoint kosmos-g.safetensors --sd15 models/sd15 \
        --captions coco/annotations/captions_val2014.json --images coco/val2014 \
        --features inception --feature-model models/inception-2015-12-05.pt --out runs/eval/coco
    python -m training.eval layout --model runs/layout/export.safetensors --out runs/eval/layout

Everything loads from local paths; nothing is downloaded. See docs/evaluation.md for the model folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from kosmos_g_core.dtypes import DTYPES
from training.cli import setup_logging

log = logging.getLogger(__name__)



def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load_generator(args):
    from kosmos_g_core.checkpoint import load_checkpoint

    from .evaluation.sampler import DiffusionSampler

    device, dtype = _device(args.device), DTYPES[args.dtype]
    if not args.checkpoint or not args.sd15:
        raise SystemExit("generation needs --checkpoint (KOSMOS-G pack .safetensors) and --sd15 (diffusers SD1.5 folder)")
    model = load_checkpoint(args.checkpoint, dtype=dtype, device=device).eval()
    sampler = DiffusionSampler.from_folder(args.sd15, args.scheduler, device=device, dtype=dtype)
    return model, sampler


def _identity(args) -> dict:
    """What made the images, beyond the sampler settings: a resumed run into the same --out must match it."""
    checkpoint = Path(args.checkpoint)
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_bytes": checkpoint.stat().st_size,
            "sd15": str(Path(args.sd15).resolve()), "dtype": args.dtype, "device": _device(args.device)}


def cmd_dreambench(args) -> dict:
    from .evaluation import dreambench
    from .evaluation.dreambench_protocol import load_dreambench
    from .evaluation.encoders import ClipEncoder, DinoEncoder
    from .evaluation.sampler import SamplerSettings

    out = Path(args.out)
    settings = SamplerSettings(args.scheduler, args.steps, args.guidance, args.resolution)
    if args.score_only:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        entries = manifest["images"]
    else:
        subjects = load_dreambench(args.dreambench, args.subjects or None)
        if args.prompts:
            subjects = [replace(s, prompts=s.prompts[: args.prompts]) for s in subjects]
        model, sampler = _load_generator(args)
        with torch.inference_mode():
            entries = dreambench.generate(model, sampler, subjects, out, settings, args.samples, args.seed,
                                          identity=_identity(args))
        del model, sampler
    device = _device(args.device)
    dino = DinoEncoder(args.dino, device) if args.dino else None
    clip = ClipEncoder(args.clip, device) if args.clip else None
    if dino is None and clip is None:
        log.warning("neither --dino nor --clip given: images generated, nothing scored")
    results = dreambench.score(entries, out, dino, clip)
    info = asdict(settings) | {"samples_per_prompt": args.samples, "seed": args.seed, "dino": args.dino or None,
                               "clip": args.clip or None}
    files = dreambench.write_report(results, entries, out, info)
    sys.stdout.write(files["markdown"].read_text(encoding="utf-8"))
    return results


def cmd_coco_fid(args) -> dict:
    from .evaluation import coco
    from .evaluation.fid import build_feature_extractor, fid_from_stats, stats_of_images
    from .evaluation.report import markdown_table, write_json
    from .evaluation.sampler import SamplerSettings

    out = Path(args.out)
    settings = SamplerSettings(args.scheduler, args.steps, args.guidance, args.resolution)
    items = coco.load_captions(args.captions, args.count, args.seed)
    if not args.score_only:
        model, sampler = _load_generator(args)
        with torch.inference_mode():
            coco.generate(model, sampler, items, out, settings, args.seed, args.batch, identity=_identity(args))
        del model, sampler
    extractor = build_feature_extractor(args.features, args.feature_model, _device(args.device))
    gen = stats_of_images(coco.generated_images(out, len(items)), extractor, total=len(items),
                          desc="FID features, generated images")
    real = stats_of_images(coco.real_images(args.images, items, args.resolution), extractor, total=len(items),
                           desc="FID features, real images")
    value = fid_from_stats(gen, real)
    comparable = args.features == "inception"
    results = {
        "benchmark": "MS-COCO val2014 zero-shot FID",
        "fid": value,
        "features": args.features, "feature_model": str(args.feature_model),
        "comparable_to_paper": comparable,
        "note": ("FID Inception-v3 (TF-FID port) features, PIL-bicubic resize to 299; paper: 10.99"
                 if comparable else "FD on CLIP image embeddings: NOT comparable to published FID numbers"),
        "images": {"generated": gen.count, "real": real.count},
        "settings": asdict(settings) | {"seed": args.seed, "captions": args.captions},
    }
    write_json(results, out / "results.json")
    label = "FID" if comparable else "FD_CLIP (not FID)"
    md = ("# MS-COCO zero-shot\n\n"
          + markdown_table({label: {"value": value, "images": gen.count}}, ["value", "images"], first="metric")
          + f"\nSettings: {settings.scheduler} {settings.steps} steps, guidance {settings.guidance}, "
          f"{settings.resolution} px, seed {args.seed}; real images resized (short side, bicubic) and centre-cropped "
          f"to {settings.resolution} px. {results['note']}.\n")
    (out / "results.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return results


def cmd_layout(args) -> dict:
    from .evaluation.layout import main as layout_main
    from .evaluation.report import bar_chart, markdown_table, write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argv = ["--scenes", str(args.scenes), "--seed", str(args.seed), "--size", str(args.size),
            "--json", str(out / "layout_raw.json")]
    if args.model:
        argv += ["--model", args.model]
    if args.best_of:
        argv += ["--best-of", str(args.best_of)]
    if args.coco_captions:
        argv += ["--coco-captions", args.coco_captions, "--coco-labels", args.coco_labels, "--limit", str(args.limit)]
    scores = layout_main(argv)
    rows = {name: {k: v for k, v in row.items() if isinstance(v, (int, float))} for name, row in scores.items()
            if isinstance(row, dict)}
    write_json({"benchmark": "layout metrics (kosmos_g_core.layout)", "scores": scores}, out / "results.json")
    columns = sorted({k for r in rows.values() for k in r})
    (out / "results.md").write_text("# Layout metrics\n\n" + markdown_table(rows, columns, first="planner"),
                                    encoding="utf-8")
    unit = [c for c in columns if all(0.0 <= float(r.get(c, 0.0)) <= 1.0 for r in rows.values())]
    if rows and unit:
        bar_chart(rows, unit, out / "layout_scores.png", title="layout metrics")
    return scores


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring's examples as written, and each option's default (when it has a meaningful one) in its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        meaningless = default is None or default is False or default == "" or default == [] or default == argparse.SUPPRESS
        if not meaningless and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .evaluation.layout import add_arguments as add_layout_arguments

    summary, _, examples = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m training.eval", description=summary, epilog=examples,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{dreambench,coco-fid,layout}",
                                help="the evaluation to run; `python -m training.eval <command> --help` for its options")

    def generation_args(p, scheduler: str, steps: int, guidance: float):
        p.add_argument("--checkpoint", default="", help="KOSMOS-G pack .safetensors (not needed with --score-only)")
        p.add_argument("--sd15", default="", help="local diffusers SD1.5 folder (unet/, vae/, scheduler/)")
        p.add_argument("--out", required=True, help="output folder; images already in it are kept, not redone")
        p.add_argument("--scheduler", default=scheduler, choices=("dpmsolver++", "ddim"), help="sampling scheduler")
        p.add_argument("--steps", type=int, default=steps, help="sampling steps")
        p.add_argument("--guidance", type=float, default=guidance, help="classifier-free guidance scale")
        p.add_argument("--resolution", type=int, default=512, help="generated image side in pixels")
        p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
        p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
        p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of the generator")
        p.add_argument("--score-only", action="store_true", help="score the images already in --out")

    db = sub.add_parser("dreambench", help="DreamBench DINO / CLIP-I / CLIP-T (KOSMOS-G single-image protocol)",
                        description="DreamBench DINO / CLIP-I / CLIP-T with KOSMOS-G's single-image protocol "
                                    "(docs/evaluation.md).", formatter_class=_HelpFormatter)
    generation_args(db, "dpmsolver++", 100, 7.5)
    db.add_argument("--dreambench", default="", help="folder with prompts_and_classes.txt and the subject images")
    db.add_argument("--dino", default="", help="local transformers ViTModel folder of DINO ViT-S/16")
    db.add_argument("--clip", default="", help="local transformers CLIPModel folder of CLIP ViT-B/32")
    db.add_argument("--samples", type=int, default=4, help="images per prompt (protocol: 4)")
    db.add_argument("--subjects", nargs="*", default=[], help="subset of subjects (default: all 30)")
    db.add_argument("--prompts", type=int, default=0, help="only the first N prompts per subject, 0 = all 25")
    db.set_defaults(func=cmd_dreambench)

    cf = sub.add_parser("coco-fid", help="MS-COCO val2014 zero-shot FID",
                        description="MS-COCO val2014 zero-shot FID: one image per sampled caption against the real "
                                    "images of those captions (docs/evaluation.md).", formatter_class=_HelpFormatter)
    generation_args(cf, "ddim", 250, 3.0)
    cf.add_argument("--captions", required=True, help="annotations/captions_val2014.json")
    cf.add_argument("--images", required=True, help="the val2014/ image folder (real images)")
    cf.add_argument("--count", type=int, default=30000, help="captions (and generated images)")
    cf.add_argument("--batch", type=int, default=8, help="images generated per batch")
    cf.add_argument("--features", default="inception", choices=("inception", "clip"), help="FID feature extractor")
    cf.add_argument("--feature-model", required=True,
                    help="inception: inception-2015-12-05.pt TorchScript file; clip: a CLIPModel folder")
    cf.set_defaults(func=cmd_coco_fid)

    lay = sub.add_parser("layout", help="layout metrics of the text-to-layout planners (training.evaluation.layout)",
                         description="mIoU, count and relation accuracy of the rule-based and learned layout "
                                     "planners (docs/layout.md).", formatter_class=_HelpFormatter)
    lay.add_argument("--out", required=True, help="output folder")
    add_layout_arguments(lay)
    lay.set_defaults(func=cmd_layout)
    return parser


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
