"""`python -m benchmarks.core`: load time, load memory and encode speed of the pack's checkpoint format, and the
MLLM forward against transformers' Kosmos-2 text model with the same weights.

Three processes, so each measurement starts clean:
1. a child builds a random KOSMOS-G at the chosen size directly in the chosen dtype (no fp32 copy) and saves it in the
   pack's format;
2. a fresh child loads it (time, peak resident memory vs the file size), encodes "<i> wearing <i>" with two images,
   then builds transformers' `Kosmos2TextModel` at the same dimensions *sharing* the loaded MLLM tensors (no copy)
   and times both MLLM forwards on the same ids and image embeddings, alternating runs;
3. this process prints the table.

Both MLLMs run in the same dtype, threads and inputs, under `torch.inference_mode`, with SDPA attention.
The tokenizer files come from `--tokenizer-dir` (default: the official ones shipped in `kosmos_g_core/assets/`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kosmos_g_core.dtypes import DTYPES
from kosmos_g_core.tokenizer import BUNDLED_DIR

log = logging.getLogger(__name__)

PROMPT = "<i> wearing <i>"


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # Unix only; /proc covers Linux

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _peak_rss()


def _loadavg() -> float:
    """1-minute load average: timings on a machine busy with other work are slower for both sides alike."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _config(size: str):
    from kosmos_g_core.config import PRESETS

    return PRESETS[size]


def _tokenizer(tokenizer_dir: Path):
    from kosmos_g_core.tokenizer import KosmosTokenizer

    spm, vocab = tokenizer_dir / "sentencepiece.bpe.model", tokenizer_dir / "dict.txt"
    if not (spm.is_file() and vocab.is_file()):
        raise SystemExit(f"{tokenizer_dir}: needs sentencepiece.bpe.model and dict.txt (pass --tokenizer-dir)")
    return KosmosTokenizer.from_files(spm, vocab)


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1: build and save


def _build(args: argparse.Namespace) -> dict[str, Any]:
    from kosmos_g_core.checkpoint import save_checkpoint
    from kosmos_g_core.model import KosmosG

    dtype = DTYPES[args.dtype]
    config = _config(args.size)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = KosmosG(config, dtype=dtype)  # parameters are created in `dtype`: never an fp32 copy
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    save_checkpoint(args.file, model, _tokenizer(args.tokenizer_dir), dtype=dtype)
    return {"params": params, "build_s": build_s, "save_s": time.perf_counter() - t0,
            "build_peak_rss": _peak_rss(), "file_bytes": Path(args.file).stat().st_size}


# ---------------------------------------------------------------------------------------------------------------------
# Stage 2: load, encode, compare with transformers


def _images(paths: Sequence[Path]):
    from PIL import Image

    if paths:
        return [Image.open(p) for p in paths]
    # DreamBench-like: two 512 px photos; smooth colour fields with noise stand in for them.
    gen = torch.Generator().manual_seed(0)
    images = []
    for size in ((512, 512), (512, 384)):
        h, w = size
        ramp = torch.linspace(0, 1, w).expand(h, w)
        rgb = torch.stack([ramp, ramp.T.mean() * torch.ones(h, w), 1 - ramp], -1)
        rgb = (rgb * 200 + torch.rand(h, w, 3, generator=gen) * 55).clamp(0, 255).to(torch.uint8)
        images.append(Image.fromarray(rgb.numpy()))
    return images


def _elapsed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _hf_kosmos2_config(config, vocab_size: int):
    """transformers' Kosmos2Config at the dimensions of a KOSMOS-G `config` (its MLLM, vision tower, resampler)."""
    from transformers import Kosmos2Config

    v, m = config.vision, config.mllm
    return Kosmos2Config(
        text_config={"vocab_size": vocab_size, "embed_dim": m.dim, "layers": m.layers, "ffn_dim": m.ffn_dim,
                     "attention_heads": m.heads, "max_position_embeddings": m.max_positions, "dropout": 0.0,
                     "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0,
                     "scale_embedding": True, "pad_token_id": m.pad_id},
        vision_config={"hidden_size": v.width, "intermediate_size": v.width * v.mlp_ratio, "num_hidden_layers": v.layers,
                       "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size},
        latent_query_num=config.connector.num_queries)


def _hf_kosmos2(model, dtype: torch.dtype):
    """transformers' Kosmos2Model (vision tower, image-to-text projection, text model) at the loaded model's
    dimensions, its parameters *being* the loaded tensors (no copy), named by the Kosmos-2 converter's own key map."""
    from transformers import Kosmos2Model

    from kosmos_g_core.kosmos2_checkpoint import hf_to_official_key

    cfg = _hf_kosmos2_config(model.config, model.config.mllm.vocab_size)
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = cfg.vision_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = Kosmos2Model(cfg)
    ours = model.state_dict()
    state = {}
    for key in hf.state_dict():
        official = hf_to_official_key(key)
        if official is not None:
            state[key] = ours[official]
    hf.load_state_dict(state, strict=False, assign=True)
    positions = hf.text_model.model.embed_positions  # its sinusoid table is a non-persistent buffer: rebuild it
    table = positions.get_embedding(positions.num_positions + positions.offset, positions.embedding_dim,
                                    positions.padding_idx)
    positions.register_buffer("weights", table.to(dtype), persistent=False)
    if hasattr(hf.vision_model.model.embeddings, "position_ids"):
        n = hf.vision_model.model.embeddings.num_positions
        hf.vision_model.model.embeddings.register_buffer("position_ids", torch.arange(n)[None], persistent=False)
    missing = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.device.type == "meta"]
    if missing:
        raise RuntimeError(f"transformers' Kosmos2Model has tensors the KOSMOS-G file does not fill: {missing[:5]}")
    return hf.eval()


def _one_layer_linears(model) -> list:
    """The six Linears of the MLLM's first layer (q, k, v, out, fc1, fc2): every layer has these shapes."""
    layer = model.mllm.layers[0]
    attn = layer.self_attn
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, layer.ffn.fc1, layer.ffn.fc2]


def _matmuls_alone(model, tokens: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """The machine's rate for the MLLM's own products: one layer's six Linears on (tokens, in) inputs, alone (no
    attention, norms or copies), through the same Linear modules the forward uses. Their ~100 MB of weights at the
    official size exceed the L3 cache, as in the forward, so the rate is not a cache-warm one."""
    linears = _one_layer_linears(model)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(tokens, lin.in_features, generator=gen).to(dtype) for lin in linears]

    def run():
        for lin, x in zip(linears, inputs, strict=True):
            lin(x)

    with torch.inference_mode():
        run()  # warm-up
        seconds = statistics.median(_elapsed(run) for _ in range(repeats))
    flops = 2 * tokens * sum(lin.in_features * lin.out_features for lin in linears)
    return {"layer_s": seconds, "layer_flops": flops}


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from kosmos_g_core.checkpoint import load_checkpoint
    from kosmos_g_core.ops import cpu_half_gemm, cpu_has_native_gemm
    from kosmos_g_core.prompt import InterleavedPrompt

    dtype = DTYPES[args.dtype]
    # Where the CPU has no half-precision dot-product instructions, the core's Linears compute products in fp32
    # (kosmos_g_core/ops.py); the "native" rows time torch's own half-precision GEMM on the same model for contrast.
    fast_path = not cpu_has_native_gemm(dtype)
    modes = ("auto", "native") if fast_path else ("auto",)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "rss_before_load": _current_rss(),
                              "loadavg_start": _loadavg(), "native_half_gemm": not fast_path}
    t0 = time.perf_counter()
    model = load_checkpoint(args.file, dtype=dtype)
    result["load_s"] = time.perf_counter() - t0
    result["load_peak_rss"] = _peak_rss()

    prompt = InterleavedPrompt.from_text(PROMPT, images=_images(args.images))
    with torch.inference_mode():
        for mode in modes:
            with cpu_half_gemm(mode):
                model.encode(prompt)  # warm-up (and the empty negative's condition, computed once per model)
                encode = [_elapsed(lambda: model.encode(prompt)) for _ in range(args.repeats)]
            result[f"encode_{mode}_s"] = statistics.median(encode)
    result["encode_peak_rss"] = _peak_rss()

    batch = model.collate([prompt])
    tokens = int(batch.tokens.shape[1])
    with torch.inference_mode():
        pixels = batch.pixels.to(dtype)
        image_embeds = model.encode_images(pixels)
        hf = _hf_kosmos2(model, dtype)
        mask = batch.image_mask

        def ours(mode: str) -> Callable[[], torch.Tensor]:
            def forward():
                with cpu_half_gemm(mode):
                    return model.mllm_forward(batch.tokens, image_embeds, mask)
            return forward

        def theirs():
            return hf.text_model(input_ids=batch.tokens, image_embeds=image_embeds,
                                 image_embeds_position_mask=mask.long(), use_cache=False).last_hidden_state

        def theirs_encode():  # the images through the vision tower and resampler, then the text model
            return hf(pixel_values=pixels, input_ids=batch.tokens, image_embeds_position_mask=mask.long(),
                      use_cache=False).last_hidden_state

        a, b = ours("auto")(), theirs()  # warm-up, and the outputs to compare
        result["hidden_max_abs_diff"] = float((a.float() - b.float()).abs().max())
        result["hidden_max_abs"] = float(b.float().abs().max())
        result["hidden_rel_rms_diff"] = float((a.float() - b.float()).norm() / b.float().norm())
        timings: dict[str, list[float]] = {**{f"mllm_{mode}_s": [] for mode in modes}, "mllm_hf_s": [],
                                           "encode_hf_s": []}
        for mode in modes[1:]:
            ours(mode)()  # warm-up
        theirs_encode()
        for _ in range(args.repeats):  # alternate, so drift in machine load hits every side alike
            for mode in modes:
                timings[f"mllm_{mode}_s"].append(_elapsed(ours(mode)))
            timings["mllm_hf_s"].append(_elapsed(theirs))
            timings["encode_hf_s"].append(_elapsed(theirs_encode))
    result.update({k: statistics.median(v) for k, v in timings.items()})
    for mode in modes:
        with cpu_half_gemm(mode):
            alone = _matmuls_alone(model, tokens, dtype, args.repeats)
        result[f"matmul_{mode}_layer_s"] = alone["layer_s"]
    result.update({"tokens": tokens, "layers": model.config.mllm.layers, "layer_flops": alone["layer_flops"],
                   "hf_attn": hf.config._attn_implementation, "final_peak_rss": _peak_rss(),
                   "loadavg_end": _loadavg()})
    return result


# ---------------------------------------------------------------------------------------------------------------------
# --conversion: memory and time of the converter on full-size synthetic sources


def _write_streaming(path: Path, shapes: dict[str, tuple[int, ...]], make: Callable[[tuple[int, ...]], torch.Tensor],
                     dtype: torch.dtype) -> None:
    """A safetensors file written one generated tensor at a time, so a 6.66 GB source never sits in memory."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        n = dtype.itemsize * int(torch.Size(shape).numel())
        header[key] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            f.write(make(shape).to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _write_sources(args: argparse.Namespace) -> dict[str, Any]:
    """An official-layout fp16 fairseq pickle and a Kosmos-2-layout fp32 HF folder, both at the chosen size."""
    import shutil

    from transformers import Kosmos2Model

    from kosmos_g_core.model import KosmosG

    folder = Path(args.file)
    config = _config(args.size)
    gen = torch.Generator().manual_seed(0)

    def make(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * 0.02

    # Kosmos-2: transformers' own key names and shapes (vocab 65037 at the official size).
    hf_config = _hf_kosmos2_config(config, config.mllm.vocab_size + 1030)
    with torch.device("meta"):
        shapes = {k: tuple(t.shape) for k, t in Kosmos2Model(hf_config).state_dict().items()}
    (folder / "kosmos2").mkdir(parents=True, exist_ok=True)
    _write_streaming(folder / "kosmos2" / "model.safetensors", shapes, make, torch.float32)
    shutil.copy(args.tokenizer_dir / "sentencepiece.bpe.model", folder / "kosmos2" / "sentencepiece.bpe.model")

    # Official: the fairseq state dict in fp16 with the tied output projection and the buffers real files carry.
    model = KosmosG(config, dtype=torch.float16)
    state = model.state_dict()
    state["gpt_model.decoder.output_projection.weight"] = state["gpt_model.decoder.embed_tokens.weight"]
    state["gpt_model.decoder.embed_positions._float_tensor"] = torch.zeros(1, dtype=torch.float16)
    state["gpt_model.decoder.self_attn_sope.scale"] = torch.ones(config.mllm.heads, dtype=torch.float16)
    torch.save({"model": state, "args": None, "cfg": {"model": {"_name": "kosmosg_xl"}}}, folder / "official.pt")
    return {"official_bytes": (folder / "official.pt").stat().st_size,
            "kosmos2_bytes": (folder / "kosmos2" / "model.safetensors").stat().st_size}


def _convert(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    from kosmos_g_core.convert import convert_kosmos2, convert_official

    folder = Path(args.file)
    out = folder / f"{kind}.safetensors"
    rss_before = _current_rss()
    t0 = time.perf_counter()
    if kind == "official":
        convert_official(folder / "official.pt", out, args.tokenizer_dir / "sentencepiece.bpe.model",
                         args.tokenizer_dir / "dict.txt", dtype=DTYPES[args.dtype], overwrite=True)
    else:
        convert_kosmos2(folder / "kosmos2", out, dtype=DTYPES[args.dtype], overwrite=True)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss(), "rss_before": rss_before,
            "out_bytes": out.stat().st_size}


def _conversion_table(args: argparse.Namespace, sources: dict[str, Any], official: dict[str, Any],
                      kosmos2: dict[str, Any]) -> str:
    rows = [("conversion benchmark", f"{args.size} size, output {args.dtype}, synthetic sources")]
    for name, src, res in (("official fp16 .pt", sources["official_bytes"], official),
                           ("Kosmos-2 fp32 model.safetensors", sources["kosmos2_bytes"], kosmos2)):
        rows.append((f"{name} -> pack", f"{_gb(src)} -> {_gb(res['out_bytes'])} in {res['seconds']:.1f} s; peak RSS "
                                         f"{_gb(res['peak_rss'])} = {res['peak_rss'] / src:.2f} x source, "
                                         f"{res['peak_rss'] / res['out_bytes']:.2f} x output ({_gb(res['rss_before'])} before converting)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Orchestration


def _child(stage: str, args: argparse.Namespace, file: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.core", "--stage", stage, "--file", str(file),
           "--size", args.size, "--dtype", args.dtype, "--repeats", str(args.repeats),
           "--tokenizer-dir", str(args.tokenizer_dir)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for image in args.images:
        cmd += ["--images", str(image)]
    log.info("running %s", " ".join(cmd[3:]))
    # The child imports this same package, wherever it was imported from here (a checkout or site-packages).
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark stage '{stage}' failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _memory_target(args: argparse.Namespace) -> str:
    """The <= 1.25 x file size target is for the official size: a tiny file is dwarfed by Python + torch themselves."""
    if args.size == "official":
        return "(target <= 1.25)"
    return "(no target at this size: Python + torch alone dwarf a small file; the target is for --size official)"


def _speed_rows(args: argparse.Namespace, measured: dict[str, Any], size: int) -> list[tuple[str, str]]:
    """Encode and MLLM-forward rows: ours (and, where the core computes half-precision products in fp32, ours with
    torch's own half-precision GEMM), transformers, and the achieved rate against the matmuls alone."""
    fast_path = not measured["native_half_gemm"]
    path = (f"products in fp32: this CPU has no {args.dtype} dot-product instructions" if fast_path
            else f"{args.dtype} products")
    flops = measured["layer_flops"] * measured["layers"]  # the MLLM's Linears over all layers (attention is ~1 %)

    def rate(seconds: float) -> str:
        return f"{flops / seconds / 1e9:.0f} GFLOP/s"

    rows = [(f"encode '{PROMPT}', 2 images", f"{measured['encode_auto_s']:.2f} s (cond; the empty negative is "
                                             f"computed once per model; median of {args.repeats}); {path}")]
    if fast_path:
        rows.append((f"encode, torch's {args.dtype} GEMM", f"{measured['encode_native_s']:.2f} s"))
    rows.append(("transformers Kosmos2Model, the same 2 images + text", f"{measured['encode_hf_s']:.2f} s (vision "
                 f"tower, resampler, text model; no AlignerNet): ours encodes "
                 f"{measured['encode_hf_s'] / measured['encode_auto_s']:.2f}x as fast"))
    rows += [("peak RSS after encode", f"{_gb(measured['encode_peak_rss'])} = "
                                       f"{measured['encode_peak_rss'] / size:.2f} x file size"),
             (f"MLLM forward, {measured['tokens']} tokens: ours", f"{measured['mllm_auto_s']:.3f} s, "
                                                                  f"{rate(measured['mllm_auto_s'])}")]
    if fast_path:
        rows.append((f"MLLM forward: ours with torch's {args.dtype} GEMM", f"{measured['mllm_native_s']:.3f} s, "
                                                                          f"{rate(measured['mllm_native_s'])}"))
    alone = measured["matmul_auto_layer_s"] * measured["layers"]
    rows += [
        (f"MLLM forward: transformers Kosmos2TextModel ({measured['hf_attn']})",
         f"{measured['mllm_hf_s']:.3f} s, {rate(measured['mllm_hf_s'])}"),
        ("ours vs transformers", f"{measured['mllm_hf_s'] / measured['mllm_auto_s']:.2f}x the speed (target >= 1.3); "
                                 f"hidden states differ by {measured['hidden_rel_rms_diff']:.2%} RMS, at most "
                                 f"{measured['hidden_max_abs_diff']:.3g} (max |hidden| {measured['hidden_max_abs']:.3g})"),
        ("the forward's matmuls alone", f"{alone:.3f} s ({measured['matmul_auto_layer_s'] * 1e3:.1f} ms per layer "
                                        f"x {measured['layers']}), {rate(alone)}; the forward runs at "
                                        f"{alone / measured['mllm_auto_s']:.0%} of that rate"),
    ]
    if fast_path:
        native = measured["matmul_native_layer_s"] * measured["layers"]
        rows.append((f"the matmuls alone, torch's {args.dtype} GEMM", f"{native:.3f} s, {rate(native)}"))
    return rows


def _table(args: argparse.Namespace, built: dict[str, Any], measured: dict[str, Any]) -> str:
    size = built["file_bytes"]
    rows = [
        ("model", f"{args.size}, {built['params'] / 1e9:.3f}B parameters, {args.dtype}, "
                  f"{measured['threads']} CPU threads"),
        ("machine load average (1 min)", f"{measured['loadavg_start']:.1f} at load, {measured['loadavg_end']:.1f} at end "
                                         f"({os.cpu_count()} CPUs)"),
        ("file size", _gb(size)),
        ("build + save (random weights)", f"{built['build_s']:.1f} s + {built['save_s']:.1f} s, "
                                          f"peak RSS {_gb(built['build_peak_rss'])}"),
        ("load time", f"{measured['load_s']:.1f} s"),
        ("peak RSS of the load process", f"{_gb(measured['load_peak_rss'])} = "
                                         f"{measured['load_peak_rss'] / size:.2f} x file size {_memory_target(args)}; "
                                         f"{_gb(measured['rss_before_load'])} before loading"),
        *_speed_rows(args, measured, size),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("official", "tiny"), default="official",
                   help="official: the full 1.89B-parameter model (about 4 GB in bf16, a few minutes on 2 cores); "
                        "tiny: a seconds-long smoke run of the same steps (default official)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="file and compute dtype (default bf16)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, median reported (default 3)")
    p.add_argument("--images", type=Path, action="append", default=[],
                   help="an image file (give two); default: two synthetic 512 px images")
    p.add_argument("--tokenizer-dir", type=Path, default=BUNDLED_DIR,
                   help="folder with sentencepiece.bpe.model and dict.txt (default: the official files shipped in "
                        "kosmos_g_core/assets/kosmos_tokenizer/)")
    p.add_argument("--workdir", type=Path, help="where to write the checkpoint (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the raw numbers to this JSON file")
    p.add_argument("--conversion", action="store_true",
                   help="instead: time and peak memory of the converter on full-size synthetic official and Kosmos-2 "
                        "sources (writes about 18 GB to the work folder)")
    p.add_argument("--stage", choices=("build", "measure", "sources", "convert-official", "convert-kosmos2"),
                   help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage:  # a child: one JSON line on stdout
        stages: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
            "build": _build, "measure": _measure, "sources": _write_sources,
            "convert-official": lambda a: _convert(a, "official"), "convert-kosmos2": lambda a: _convert(a, "kosmos2"),
        }
        sys.stdout.write(json.dumps(stages[args.stage](args)) + "\n")
        return 0
    if len(args.images) not in (0, 2):
        raise SystemExit("give --images twice (two images) or not at all")
    _tokenizer(args.tokenizer_dir)  # fail early
    if args.conversion:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            sources = _child("sources", args, Path(tmp))
            results = {kind: _child(f"convert-{kind}", args, Path(tmp)) for kind in ("official", "kosmos2")}
        sys.stdout.write(_conversion_table(args, sources, results["official"], results["kosmos2"]))
        if args.json:
            args.json.write_text(json.dumps({"sources": sources, **results}, indent=2))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        file = Path(tmp) / f"kosmos_g_{args.size}_{args.dtype}.safetensors"
        built = _child("build", args, file)
        measured = _child("measure", args, file)
    sys.stdout.write(_table(args, built, measured))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "build": built,
                                         "measure": measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
