"""Writes the shipped workflows: workflows/<name>.json (UI format, opens under Templates, titled by its file name),
workflows/<name>.jpg (its thumbnail, workflow_thumbnails.py) and workflows/api/<name>.json (API format, for
POST /prompt and the tests), from the specs below.

Both files come from one spec, so they describe the same graph; the UI file's widget order comes from a running
ComfyUI's /object_info (the same source the frontend uses). Run against a ComfyUI that has the pack installed:

    python tests/nodes/make_workflows.py --server http://127.0.0.1:8188     # or --object-info saved.json

Settings follow the paper: DPM++ 2M (`dpmpp_2m`) with the `normal` scheduler, 50 steps, CFG 7.5 (6 for editing),
512x512 (the SDXL workflows: 1024x1024, SDXL's size, which KOSMOS-G Encode's size conditioning also says). `normal` because the official KOSMOS-G pipeline samples with diffusers' DPMSolverMultistepScheduler at its
defaults (DPM-Solver++, order 2, evenly spaced timesteps, no Karras sigmas); `karras` also works but is not what the
paper's numbers were measured with.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_format import _input_specs, extra_widget_values, is_widget  # noqa: E402
from workflow_thumbnails import write_all as write_thumbnails  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACK_ID, PACK_VERSION = "kosmos-g", "0.1.0"
CORE_VERSION = "0.33.0"

SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
KOSMOS_G = "kosmos-g.safetensors"
CANNY = "control_v11p_sd15_canny_fp16.safetensors"
LORA = "sd15_style_lora.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
KOSMOS_G_SDXL = "kosmos-g-sdxl.safetensors"
SDXL_CANNY = "diffusers_xl_canny_mid.safetensors"
MODEL_LINKS = {
    SD15: ("checkpoints", "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/" + SD15),
    CANNY: ("controlnet", "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/" + CANNY),
    SDXL: ("checkpoints", "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/" + SDXL),
    SDXL_CANNY: ("controlnet", "https://huggingface.co/lllyasviel/sd_control_collection/resolve/main/" + SDXL_CANNY),
}
SAMPLER = {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "normal", "denoise": 1.0}

# Sizes of the nodes as the frontend lays them out (width, height); it re-measures on load anyway.
SIZES = {
    "CheckpointLoaderSimple": (315, 98), "KosmosGLoader": (315, 82), "KosmosGCheckModel": (270, 46),
    "LoadImage": (315, 314), "KosmosGInterleavedPrompt": (400, 330), "KosmosGEncode": (400, 200),
    "KosmosGTextEncode": (400, 200), "KosmosGConcatCLIP": (320, 102), "CLIPTextEncode": (400, 200),
    "EmptyLatentImage": (315, 106), "KSampler": (315, 262), "VAEDecode": (210, 46), "SaveImage": (400, 450),
    "ControlNetLoader": (315, 58), "ControlNetApplyAdvanced": (315, 186), "Canny": (315, 82),
    "LoraLoaderModelOnly": (315, 82), "MarkdownNote": (420, 260),
}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # input name -> (source id, source slot)
    title: str | None = None


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node]


def _common(ref_id: int, sampler_pos=(1240, 100), model=(1, 0), positive=(6, 0), negative=(6, 1), cfg=7.5,
            prefix="kosmos_g", size=512) -> list[Node]:
    """Latent, KSampler, decode and save; node ids 7-10."""
    return [
        Node(7, "EmptyLatentImage", (840, 560), {"width": size, "height": size, "batch_size": 1}),
        Node(8, "KSampler", sampler_pos, {**SAMPLER, "cfg": cfg},
             {"model": model, "positive": positive, "negative": negative, "latent_image": (7, 0)}),
        Node(9, "VAEDecode", (sampler_pos[0] + 360, sampler_pos[1]), {}, {"samples": (8, 0), "vae": (ref_id, 2)}),
        Node(10, "SaveImage", (sampler_pos[0] + 360, sampler_pos[1] + 100), {"filename_prefix": prefix},
             {"images": (9, 0)}),
    ]


def _loaders() -> list[Node]:
    return [
        Node(1, "CheckpointLoaderSimple", (0, 100), {"ckpt_name": SD15}),
        Node(3, "KosmosGLoader", (0, 260), {"model_name": KOSMOS_G, "dtype": "auto"}),
    ]


def _sdxl_loaders() -> list[Node]:
    """SDXL checkpoint, the SDXL KOSMOS-G file, and Check Model comparing the two (node ids 1-3)."""
    return [
        Node(1, "CheckpointLoaderSimple", (0, 100), {"ckpt_name": SDXL}),
        Node(3, "KosmosGLoader", (0, 260), {"model_name": KOSMOS_G_SDXL, "dtype": "auto"}),
        Node(2, "KosmosGCheckModel", (380, 100), {}, {"model": (1, 0), "kosmos_g": (3, 0)}),
    ]


def _sdxl_encode() -> Node:
    """KOSMOS-G Encode with CLIP Text Encode (SDXL)'s size conditioning at SDXL's 1024x1024 (its defaults)."""
    return Node(6, "KosmosGEncode", (840, 260), {"negative": "", **SDXL_SIZES}, {"kosmos_g": (3, 0), "prompt": (5, 0)})


SDXL_SIZES = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
_SDXL_NOTE = (
    f"\n\nSDXL: the KOSMOS-G file must be an SDXL one (`models/kosmos_g/{KOSMOS_G_SDXL}`, trained against SDXL's "
    "text encoders; an SD1.5 KOSMOS-G file does not fit), the checkpoint an SDXL one "
    f"(`models/checkpoints/{SDXL}`). *Check Model* stops with a plain message if they do not match. KOSMOS-G "
    "Encode sets SDXL's size conditioning (advanced inputs, as CLIP Text Encode (SDXL))."
)


def sdxl_workflows() -> list[Workflow]:
    """The subject-driven, multi-entity and ControlNet graphs for SDXL: the SD1.5 ones with SDXL's loaders, 1024x1024
    and an SDXL ControlNet."""
    subject = Workflow(
        "KOSMOS-G SDXL subject-driven generation",
        "## KOSMOS-G for SDXL: subject-driven generation\n\nOne reference image, zero-shot: write `<i>` where the "
        "subject goes. Swap *example.png* for a photo of your subject (a plain background works best; connect a "
        "subject mask to paint the rest white)." + _SDXL_NOTE,
        _sdxl_loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject image"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> in the jungle"}, {"image_1": (4, 0)}),
            _sdxl_encode(),
        ] + _common(1, model=(2, 0), prefix="kosmos_g/sdxl_subject", size=1024),
    )
    multi = Workflow(
        "KOSMOS-G SDXL multi-entity composition",
        "## KOSMOS-G for SDXL: several subjects in one image\n\n`<i> wearing <i>`: image_1 fills the first `<i>`, "
        "image_2 the second. More images: more `<i>`, image_3/image_4, an image batch, or chain a second builder "
        "into `prompt`." + _SDXL_NOTE,
        _sdxl_loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject (first <i>)"),
            Node(11, "LoadImage", (0, 760), {"image": "example.png"}, title="Garment (second <i>)"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> wearing <i>"},
                 {"image_1": (4, 0), "image_2": (11, 0)}),
            _sdxl_encode(),
        ] + _common(1, model=(2, 0), prefix="kosmos_g/sdxl_multi_entity", size=1024),
    )
    controlnet = Workflow(
        "KOSMOS-G SDXL with ControlNet canny",
        "## KOSMOS-G for SDXL + ControlNet (canny)\n\nThe subject comes from the interleaved prompt, the layout from "
        "the edges of the structure image. KOSMOS-G's positive *and* negative go through Apply ControlNet. "
        f"ControlNet: an SDXL canny ControlNet in `models/controlnet/` (the workflow names `{SDXL_CANNY}`)."
        + _SDXL_NOTE,
        _sdxl_loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject image"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> on a wooden table"}, {"image_1": (4, 0)}),
            _sdxl_encode(),
            Node(11, "LoadImage", (0, 760), {"image": "example.png"}, title="Structure image"),
            Node(12, "Canny", (380, 760), {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (11, 0)}),
            Node(13, "ControlNetLoader", (380, 640), {"control_net_name": SDXL_CANNY}),
            Node(14, "ControlNetApplyAdvanced", (840, 760), {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
                 {"positive": (6, 0), "negative": (6, 1), "control_net": (13, 0), "image": (12, 0), "vae": (1, 2)}),
        ] + _common(1, model=(2, 0), positive=(14, 0), negative=(14, 1), prefix="kosmos_g/sdxl_controlnet",
                    size=1024),
    )
    return [subject, multi, controlnet]


def workflows() -> list[Workflow]:
    subject = Workflow(
        "KOSMOS-G subject-driven generation",
        "## KOSMOS-G: subject-driven generation\n\nOne reference image, zero-shot: write `<i>` where the subject "
        "goes. Swap *example.png* for a photo of your subject (a plain background works best; connect a subject "
        f"mask to paint the rest white).\n\nModels: `models/checkpoints/{SD15}`, `models/kosmos_g/{KOSMOS_G}`.",
        _loaders() + [
            Node(2, "KosmosGCheckModel", (380, 100), {}, {"model": (1, 0)}),
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject image"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> in the jungle"}, {"image_1": (4, 0)}),
            Node(6, "KosmosGEncode", (840, 260), {"negative": ""}, {"kosmos_g": (3, 0), "prompt": (5, 0)}),
        ] + _common(1, model=(2, 0), prefix="kosmos_g/subject"),
    )
    multi = Workflow(
        "KOSMOS-G multi-entity composition",
        "## KOSMOS-G: several subjects in one image\n\n`<i> wearing <i>`: image_1 fills the first `<i>`, image_2 "
        "the second. More images: more `<i>`, image_3/image_4, an image batch, or chain a second builder into "
        "`prompt`.",
        _loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject (first <i>)"),
            Node(11, "LoadImage", (0, 760), {"image": "example.png"}, title="Garment (second <i>)"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> wearing <i>"},
                 {"image_1": (4, 0), "image_2": (11, 0)}),
            Node(6, "KosmosGEncode", (840, 260), {"negative": ""}, {"kosmos_g": (3, 0), "prompt": (5, 0)}),
        ] + _common(1, prefix="kosmos_g/multi_entity"),
    )
    controlnet = Workflow(
        "KOSMOS-G with ControlNet canny",
        "## KOSMOS-G + ControlNet (canny)\n\nThe subject comes from the interleaved prompt, the layout from the "
        "edges of the structure image. KOSMOS-G's positive *and* negative go through Apply ControlNet, as in the "
        f"paper's ControlNet demo. ControlNet: `models/controlnet/{CANNY}`.",
        _loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject image"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> on a wooden table"}, {"image_1": (4, 0)}),
            Node(6, "KosmosGEncode", (840, 260), {"negative": ""}, {"kosmos_g": (3, 0), "prompt": (5, 0)}),
            Node(11, "LoadImage", (0, 760), {"image": "example.png"}, title="Structure image"),
            Node(12, "Canny", (380, 760), {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (11, 0)}),
            Node(13, "ControlNetLoader", (380, 640), {"control_net_name": CANNY}),
            Node(14, "ControlNetApplyAdvanced", (840, 760), {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
                 {"positive": (6, 0), "negative": (6, 1), "control_net": (13, 0), "image": (12, 0), "vae": (1, 2)}),
        ] + _common(1, positive=(14, 0), negative=(14, 1), prefix="kosmos_g/controlnet"),
    )
    lora = Workflow(
        "KOSMOS-G with a LoRA",
        "## KOSMOS-G + LoRA\n\nKOSMOS-G replaces CLIP, so the LoRA is applied to the MODEL only (Load LoRA (Model "
        "Only)); 'lora key not loaded: lora_te_...' warnings about its text-encoder part are expected. The LoRA's "
        "trigger words still work through CLIP: CLIP Text Encode + *KOSMOS-G + CLIP Text (Concat)*. Put your SD1.5 "
        f"LoRA in `models/loras/` and pick it (the workflow names `{LORA}`).",
        _loaders() + [
            Node(2, "LoraLoaderModelOnly", (380, 100), {"lora_name": LORA, "strength_model": 0.8}, {"model": (1, 0)}),
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Subject image"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "a watercolor painting of <i>"},
                 {"image_1": (4, 0)}),
            Node(6, "KosmosGEncode", (840, 260), {"negative": ""}, {"kosmos_g": (3, 0), "prompt": (5, 0)}),
            Node(11, "CLIPTextEncode", (380, 640), {"text": "watercolor style"}, {"clip": (1, 1)},
                 title="LoRA trigger words (CLIP)"),
            Node(12, "KosmosGConcatCLIP", (840, 500), {"clip_strength": 1.0},
                 {"kosmos_g_conditioning": (6, 0), "clip_conditioning": (11, 0)}),
        ] + _common(1, model=(2, 0), positive=(12, 0), prefix="kosmos_g/lora"),
    )
    txt2img = Workflow(
        "KOSMOS-G text to image",
        "## The default text-to-image workflow, with KOSMOS-G\n\nComfyUI's default graph with both CLIP Text "
        "Encode nodes replaced by *KOSMOS-G Text Encode* (same inputs, same output). The empty negative gives "
        "KOSMOS-G's own unconditional embedding.",
        [
            Node(4, "CheckpointLoaderSimple", (0, 100), {"ckpt_name": SD15}),
            Node(10, "KosmosGLoader", (0, 260), {"model_name": KOSMOS_G, "dtype": "auto"}),
            Node(6, "KosmosGTextEncode", (420, 100),
                 {"text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle"},
                 {"kosmos_g": (10, 0)}, title="KOSMOS-G Text Encode (Positive)"),
            Node(7, "KosmosGTextEncode", (420, 360), {"text": ""}, {"kosmos_g": (10, 0)},
                 title="KOSMOS-G Text Encode (Negative)"),
            Node(5, "EmptyLatentImage", (420, 620), {"width": 512, "height": 512, "batch_size": 1}),
            Node(3, "KSampler", (880, 100), dict(SAMPLER),
                 {"model": (4, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (5, 0)}),
            Node(8, "VAEDecode", (1240, 100), {}, {"samples": (3, 0), "vae": (4, 2)}),
            Node(9, "SaveImage", (1240, 200), {"filename_prefix": "kosmos_g/txt2img"}, {"images": (8, 0)}),
        ],
    )
    editing = Workflow(
        "KOSMOS-G image editing",
        "## KOSMOS-G: image editing from an instruction\n\n`<i>` (the image to edit) followed by the edit, as in "
        "the paper's InstructPix2Pix-style data. The image is re-generated from the prompt (no VAE encode), so the "
        "subject is kept and the rest follows the instruction. CFG 6 keeps it closer to the source.",
        _loaders() + [
            Node(4, "LoadImage", (0, 400), {"image": "example.png"}, title="Image to edit"),
            Node(5, "KosmosGInterleavedPrompt", (380, 260), {"text": "<i> make it a snowy winter scene"},
                 {"image_1": (4, 0)}),
            Node(6, "KosmosGEncode", (840, 260), {"negative": ""}, {"kosmos_g": (3, 0), "prompt": (5, 0)}),
        ] + _common(1, cfg=6.0, prefix="kosmos_g/editing"),
    )
    return [subject, multi, controlnet, lora, txt2img, editing] + sdxl_workflows()


def to_api(wf: Workflow, object_info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for node in sorted(wf.nodes, key=lambda n: n.id):
        # Every widget, at its default unless the spec sets it: what the frontend sends (and writes in the UI file).
        inputs = {name: node.widgets.get(name, options.get("default"))
                  for name, kind, options in _input_specs(object_info[node.type]) if is_widget(kind, options)}
        inputs.update({name: [str(src), slot] for name, (src, slot) in node.links.items()})
        title = node.title or object_info[node.type]["display_name"]
        out[str(node.id)] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": title}}
    return out


def _topological_order(nodes: list[Node]) -> dict[int, int]:
    done: dict[int, int] = {}
    remaining = sorted(nodes, key=lambda n: n.id)
    while remaining:
        ready = [n for n in remaining if all(src in done for src, _ in n.links.values())]
        for n in ready:
            done[n.id] = len(done)
        remaining = [n for n in remaining if n.id not in done]
    return done


def _widget_values(node: Node, info: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    for name, kind, options in _input_specs(info):
        if not is_widget(kind, options):
            continue
        values.append(node.widgets[name] if name in node.widgets else options.get("default"))
        extra = extra_widget_values(name, kind, options)
        if extra and kind == "INT":
            values.append("fixed")  # control_after_generate: keep the seed so a shared workflow reproduces
        elif extra:
            values.append("image")  # the upload button widget of LoadImage
    return values


def _properties(node: Node, info: dict[str, Any]) -> dict[str, Any]:
    ours = info.get("python_module", "").startswith("custom_nodes.")
    props: dict[str, Any] = {"cnr_id": PACK_ID if ours else "comfy-core", "ver": PACK_VERSION if ours else CORE_VERSION,
                             "Node name for S&R": node.type}
    models = [MODEL_LINKS[v] + (v,) for v in node.widgets.values() if isinstance(v, str) and v in MODEL_LINKS]
    if models:
        props["models"] = [{"name": name, "url": url, "directory": folder} for folder, url, name in models]
    return props


def to_ui(wf: Workflow, object_info: dict[str, Any]) -> dict[str, Any]:
    order = _topological_order(wf.nodes)
    links: list[list[Any]] = []
    link_of: dict[tuple[int, str], int] = {}
    outputs_of: dict[tuple[int, int], list[int]] = {}
    for node in sorted(wf.nodes, key=lambda n: order[n.id]):
        info = object_info[node.type]
        for name, _kind, _options in _input_specs(info):
            if name in node.links:
                src, slot = node.links[name]
                link_id = len(links) + 1
                src_type = object_info[next(n.type for n in wf.nodes if n.id == src)]["output"][slot]
                links.append([link_id, src, slot, node.id, None, src_type])
                link_of[(node.id, name)] = link_id
                outputs_of.setdefault((src, slot), []).append(link_id)
    ui_nodes = []
    for node in sorted(wf.nodes, key=lambda n: n.id):
        info = object_info[node.type]
        inputs = []
        for name, kind, options in _input_specs(info):
            if is_widget(kind, options):
                continue
            entry: dict[str, Any] = {"name": name, "type": kind, "link": link_of.get((node.id, name))}
            if name in info["input"].get("optional", {}):
                entry["shape"] = 7
            if entry["link"] is not None:
                links[entry["link"] - 1][4] = len(inputs)
            inputs.append(entry)
        outputs = []
        for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
            outputs.append({"name": out_name, "type": out_type, "slot_index": slot,
                            "links": outputs_of.get((node.id, slot)) or None})
        ui = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(SIZES[node.type]), "flags": {},
              "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs,
              "properties": _properties(node, info), "widgets_values": _widget_values(node, info)}
        if node.title:
            ui["title"] = node.title
        ui_nodes.append(ui)
    note_id = max(n.id for n in wf.nodes) + 1
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [0, -220], "size": list(SIZES["MarkdownNote"]),
                     "flags": {}, "order": len(order), "mode": 0, "inputs": [], "outputs": [], "title": "Read me",
                     "properties": {}, "widgets_values": [wf.note], "color": "#432", "bgcolor": "#653"})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"kosmos-g/{wf.name}")), "revision": 0,
        "last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 260]}, "frontendVersion": "1.49.6"},
        "version": 0.4,
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="URL of a running ComfyUI with the pack, e.g. http://127.0.0.1:8188")
    source.add_argument("--object-info", type=Path, help="a saved /object_info JSON")
    parser.add_argument("--out", type=Path, default=REPO / "workflows")
    args = parser.parse_args()
    if args.server:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as response:  # noqa: S310 (local server)
            object_info = json.load(response)
    else:
        object_info = json.loads(args.object_info.read_text(encoding="utf-8"))
    for wf in workflows():
        ui = to_ui(wf, object_info)
        existing = args.out / f"{wf.name}.json"
        if existing.is_file():  # a shipped workflow keeps its id, so the frontend keeps knowing it as the same one
            ui["id"] = json.loads(existing.read_text(encoding="utf-8")).get("id", ui["id"])
        _write(existing, ui)
        _write(args.out / "api" / f"{wf.name}.json", to_api(wf, object_info))
    write_thumbnails(args.out)  # the frontend's template card image, <name>.jpg beside each UI file


if __name__ == "__main__":
    main()
