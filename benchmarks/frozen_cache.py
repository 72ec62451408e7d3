"""`python -m benchmarks.frozen_cache`: training step time with and without the frozen-output cache (stage 2: CLIP
text targets; stage 3: VAE posteriors; training/data/frozen_cache.py), on CPU.

    python -m benchmarks.frozen_cache --scale toy --out runs/bench_cache_toy --threads 1
    python -m benchmarks.frozen_cache --scale sd15 --out runs/bench_cache_sd15 --threads 1

toy:  the toy world's stage-2 and stage-3 trainer configs (`training.toy_world.run.stage_config`: batch 16, its shipped
      base model, 32 px targets) on toy shards.
sd15: diffusers models of SD1.5's exact architecture with random weights (U-Net 860 M, VAE 84 M, CLIP text 123 M
      parameters; nothing is downloaded), 512 px targets, fp32, with KOSMOS-G at the tiny preset (the official
      model's trained parts and their AdamW state do not fit beside other work in this machine's memory), on a few
      synthetic samples (training.data.synthetic; the loader resizes them to 512 px). Since the tiny KOSMOS-G costs
      almost nothing, the step is the SD1.5 parts' and the saving is an upper bound of the share at full size; the
      sd15 scale therefore also counts, on PyTorch's meta device (shapes only, no memory, no weights), the FLOPs per
      sample of every part at the official sizes, which gives the share the cache removes from a full-size step.

Every measurement is `python -m training.throughput --config <config> --no-flops [--cache]` in a fresh process, with
cache off and on alternating `--rounds` times; the table gives the median step time of each, as this process's CPU
time (user + system, all its threads: what the step costs, little changed by other work on the machine) and as wall
clock (what a user waits; on a busy machine it swings with the other work). Results also go to <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def write_sd15_sized(folder: Path, seed: int = 0) -> Path:
    """A diffusers folder with SD1.5's U-Net, VAE and CLIP text encoder architectures and random weights (saved in
    fp16 to halve the 4.3 GB), the DDPM scheduler and a small word-level CLIP tokenizer (the text encoder always
    reads 77 positions, so its cost does not depend on the vocabulary)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from training.sd15 import SD15_SCHEDULER
    from training.tiny_assets import write_tiny_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    # UNet2DConditionModel's defaults are SD1.x's blocks (320/640/1280/1280, 2 layers, 8 heads) but a 1280-wide context.
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).half().save_pretrained(folder / "unet")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    ).half().save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )).half().save_pretrained(folder / "text_encoder")
    DDPMScheduler.from_config(SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    write_tiny_clip_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def toy_configs(out: Path) -> dict[str, dict]:
    """The toy world's stage-2 and stage-3 configs, on toy shards, its shipped base model and a random init."""
    from training.toy_world.run import ToyRunConfig, _init_checkpoint, stage_config
    from training.toy_world.shards import write_caption_shards, write_compositional_shards, write_kosmos_tokenizer

    cfg = ToyRunConfig()
    base = Path(__file__).resolve().parents[1] / "training" / "toy_world" / "assets" / "base"
    shards = out / "shards"
    if not (shards / "compositional").is_dir():
        write_caption_shards(shards / "captions", 500, cfg.seed)
        write_compositional_shards(shards / "compositional", 500, cfg.seed)
    tok = out / "kosmos_tokenizer"
    if not (tok / "dict.txt").is_file():
        write_kosmos_tokenizer(tok, cfg.seed)
    init = out / "init.safetensors"
    if not init.is_file():
        _init_checkpoint(init, tok, base, cfg.seed)
    captions = {"kind": "captions", "shards": str(shards / "captions"), "weight": 1}
    compositional = {"kind": "compositional", "shards": str(shards / "compositional"), "weight": 2}
    tables = {"stage2": stage_config("stage2", out, cfg, init, [captions], 1000, cfg.stage2_lr),
              "stage3": stage_config("stage3", out, cfg, init, [compositional, captions], 1000, cfg.stage3_lr)}
    for table in tables.values():
        table["sd15"]["path"] = str(base)
    return tables


def sd15_configs(out: Path, batch_stage2: int, batch_stage3: int) -> dict[str, dict]:
    from kosmos_g_core.tokenizer import BUNDLED_DIR
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_init

    sd15 = write_sd15_sized(out / "sd15")
    init = out / "tiny_init.safetensors"
    if not init.is_file():
        write_tiny_init(init, BUNDLED_DIR)
    # Few samples: the cache build encodes each once (about 10 s per 512 px image on one CPU thread).
    counts = {"captions": 2 * batch_stage2, "editing": 4, "compositional": 4}
    for kind, n in counts.items():
        if not (out / "shards" / kind).is_dir():
            write_synthetic_shards(out / "shards" / kind, kind, n, samples_per_shard=max(4, n // 2))
    sources = {kind: {"kind": kind, "shards": str(out / "shards" / kind)} for kind in counts}
    common = {"run": {"device": "cpu", "max_steps": 1000}, "parallel": {"precision": "fp32"},
              "checkpoint": {"every": 0}, "log": {"tensorboard": False}}
    return {
        "stage2": {"stage": "stage2", **common, "model": {"init": str(init)}, "sd15": {"path": str(sd15)},
                   "data": {"batch_size": batch_stage2, "num_workers": 0, "sources": [sources["captions"]]}},
        "stage3": {"stage": "stage3", **common, "model": {"init": str(init)},
                   "sd15": {"path": str(sd15), "resolution": 512},
                   "data": {"batch_size": batch_stage3, "num_workers": 0, "max_tokens": 512,
                            "sources": [{**sources["compositional"], "weight": 2}, {**sources["editing"], "weight": 2},
                                        {**sources["captions"], "weight": 1}]}},
    }


def official_flops(caption_tokens: int = 20, entity_images: int = 2) -> dict[str, float]:
    """GFLOP per sample of each part of a stage-2 and a stage-3 step at the official sizes (KOSMOS-G official preset,
    SD1.5 U-Net / VAE / CLIP text, 512 px), counted by `torch.utils.flop_counter` on the meta device (shapes only).
    Stage 2: a caption of `caption_tokens` SentencePiece tokens. Stage 3: a compositional sample with
    `entity_images` entity images (each 64 slots + <image> ... </image>) and the caption; trainable parts as the
    official stage 3 (MLLM, connector, AlignerNet M, last ViT block), the gradient crossing the frozen U-Net (its
    activation checkpointing, which re-runs its forward, not counted)."""
    from dataclasses import replace

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    from kosmos_g_core.config import PRESETS
    from kosmos_g_core.model import KosmosG

    def gflop(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    meta = torch.device("meta")
    official = PRESETS["official"]
    with meta:
        stage2 = KosmosG(replace(official, aligner=replace(official.aligner, with_decoder=True)), dtype=torch.float32)
        stage3 = KosmosG(official, dtype=torch.float32)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu"))
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    for module in (stage2, clip, unet, vae):
        module.requires_grad_(False)
    stage2.aligner.requires_grad_(True)
    last = official.vision.layers - 1
    trainable = ("gpt_model.", "img_connector.", "aligner.", f"img_model.visual.transformer.resblocks.{last}.",
                 "img_model.visual.ln_post.")
    for name, p in stage3.named_parameters():
        p.requires_grad_(name.startswith(trainable))

    T = 1 + caption_tokens
    tokens = torch.ones(1, T, dtype=torch.long, device=meta)
    with torch.no_grad():
        hidden = stage2.mllm_forward(tokens)
    out = {"stage2_mllm_forward": gflop(lambda: stage2.mllm_forward(tokens))}

    def aligner_step() -> None:
        z = stage2.align(hidden, tokens)
        (z.pow(2).mean() + stage2.aligner.reconstruct(z, T).pow(2).mean()).backward()

    out["stage2_aligner_m_n_forward_backward"] = gflop(aligner_step)
    out["stage2_clip_text_forward"] = gflop(lambda: clip(torch.ones(1, 77, dtype=torch.long, device=meta)))

    T3 = 1 + entity_images * (IMAGE_SLOTS + 3) + caption_tokens

    def kosmos_unet_step() -> None:
        # The MLLM reads T3 tokens; the image embeddings join its graph (the in-place slot scatter is no FLOP and
        # has no meta kernel), so the backward reaches the connector and the last ViT block as in training.
        embeds = stage3.encode_images(torch.zeros(entity_images, 3, 224, 224, device=meta))
        hidden3 = stage3.mllm_forward(torch.ones(1, T3, dtype=torch.long, device=meta)) + 0 * embeds.sum()
        cond = stage3.align(hidden3, torch.ones(1, T3, dtype=torch.long, device=meta))
        pred = unet(torch.zeros(1, 4, 64, 64, device=meta), torch.zeros(1, dtype=torch.long, device=meta),
                    encoder_hidden_states=cond).sample
        pred.pow(2).mean().backward()

    out["stage3_kosmos_and_unet_forward_backward"] = gflop(kosmos_unet_step)
    with torch.no_grad():
        out["stage3_vae_encode_512"] = gflop(lambda: vae.encode(torch.zeros(1, 3, 512, 512, device=meta)))
    return out


IMAGE_SLOTS = 64


def measure(config: Path, cache: bool, steps: int, warmup: int, threads: int, out: Path) -> dict:
    result = out / f"{config.stem}_{'cache' if cache else 'plain'}.json"
    cmd = [sys.executable, "-m", "training.throughput", "--config", str(config), "--steps", str(steps), "--warmup",
           str(warmup), "--no-flops", "--json", str(result), *(["--cache"] if cache else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frozen_cache", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__)
    parser.add_argument("--scale", choices=("toy", "sd15"), required=True, help="toy world sizes, or SD1.5 sizes")
    parser.add_argument("--out", required=True, help="folder for the models, shards, configs and results")
    parser.add_argument("--stages", nargs="+", default=["stage2", "stage3"], help="stages to measure (default both)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every measurement (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="off/on pairs (default: toy 3, sd15 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: toy 10, sd15 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: toy 3, sd15 1)")
    parser.add_argument("--batch-stage2", type=int, default=8, help="sd15 scale: stage-2 captions per step (default 8)")
    parser.add_argument("--batch-stage3", type=int, default=1, help="sd15 scale: stage-3 samples per step (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    toy = args.scale == "toy"
    rounds = args.rounds or (3 if toy else 1)
    steps = args.steps or (10 if toy else 1)
    warmup = args.warmup if args.warmup is not None else (3 if toy else 1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from training.toy_world import toml_writer

    tables = toy_configs(out) if toy else sd15_configs(out, args.batch_stage2, args.batch_stage3)
    report: dict = {"scale": args.scale, "threads": args.threads, "rounds": rounds, "steps": steps, "warmup": warmup,
                    "command": " ".join(["python -m benchmarks.frozen_cache", *(argv or sys.argv[1:])]), "stages": {}}
    for stage in args.stages:
        config = toml_writer.write(tables[stage], out / "configs" / f"{stage}.toml")
        runs: dict[str, list[dict]] = {"plain": [], "cache": []}
        for _ in range(rounds):
            for cache in (False, True):
                runs["cache" if cache else "plain"].append(
                    measure(config, cache, steps, warmup, threads=args.threads, out=out))
        first = runs["plain"][0]
        row = {"batch": first["micro_batch"],
               "tokens_per_sample": first["tokens_per_s_per_device"] / max(first["samples_per_s_per_device"], 1e-12)}
        for clock, key in (("wall", "step_times_s"), ("cpu", "step_cpu_times_s")):
            plain = statistics.median(t for r in runs["plain"] for t in r[key])
            cached = statistics.median(t for r in runs["cache"] for t in r[key])
            row[clock] = {"plain_s": plain, "cache_s": cached, "saving_s": plain - cached,
                          "saving_pct": 100 * (plain - cached) / plain,
                          "all_s": {k: [r[key] for r in v] for k, v in runs.items()}}
        report["stages"][stage] = row
    if not toy:
        flops = official_flops()
        s2 = flops["stage2_mllm_forward"] + flops["stage2_aligner_m_n_forward_backward"]
        s3 = flops["stage3_kosmos_and_unet_forward_backward"]
        report["official_gflop_per_sample"] = flops
        report["official_share_removed_pct"] = {
            "stage2": 100 * flops["stage2_clip_text_forward"] / (s2 + flops["stage2_clip_text_forward"]),
            "stage3": 100 * flops["stage3_vae_encode_512"] / (s3 + flops["stage3_vae_encode_512"])}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    report["load_average_end"] = os.getloadavg()[0]
    lines = [f"frozen-output cache, {args.scale} scale, CPU, {args.threads} thread(s), median of {rounds} x {steps} "
             f"steps after {warmup} warm-up (load average at the end {report['load_average_end']:.1f})",
             "stage   batch  clock  step without  step with  saving"]
    for stage, r in report["stages"].items():
        for clock in ("cpu", "wall"):
            c = r[clock]
            lines.append(f"{stage}  {r['batch']:>5}  {clock:>5}  {c['plain_s']:>10.3f} s  {c['cache_s']:>7.3f} s  "
                         f"{c['saving_s']:.3f} s ({c['saving_pct']:.0f} %)")
    if "official_gflop_per_sample" in report:
        lines.append("official sizes, GFLOP per sample (meta-device count; stage 2: 20-token caption; stage 3: "
                     "compositional sample with 2 entity images):")
        lines += [f"  {k}: {v:.1f}" for k, v in report["official_gflop_per_sample"].items()]
        lines.append("  share of a step's FLOPs the cache removes: " + ", ".join(
            f"{k} {v:.0f} %" for k, v in report["official_share_removed_pct"].items()))
    sys.stdout.write("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
