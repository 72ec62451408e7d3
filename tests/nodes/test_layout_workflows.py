"""The layout workflows (workflows/layout_*.json + API twins) and the layout nodes in a real ComfyUI.

Without ComfyUI: the UI files' links are consistent and each has an API twin with the paper's sampler settings.
With COMFYUI_PATH (the nodes engineer's `comfy_server` fixture): UI -> API through /object_info equals the twin,
the workflows run end to end (prompt -> layout -> stock ControlNet segmentation -> KSampler with KOSMOS-G
conditioning, and the regional variant with an entity mask in stock ConditioningSetMask), a trained layout model
loads from models/kosmos_g_layout/, and wrong inputs (a photo as palette image, an unknown class name) fail with
clear messages.

Regenerate the workflow files against a running ComfyUI that has the pack:

    python tests/nodes/test_layout_workflows.py --server http://127.0.0.1:8188
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE.parents[1] / "workflows"
NAMES = ("Layout to ControlNet seg", "Layout with regional prompts")
SEG = "control_v11p_sd15_seg_fp16.safetensors"
SHEEP = "Two sheep, one eating grass with a tree in front of a mountain; the sky has a cloud"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# -- the specs (used only to write the files) -------------------------------------------------------------------
def _specs(mw):
    Node, Workflow = mw.Node, mw.Workflow
    mw.SIZES.update({"KosmosGPromptToLayout": (400, 420), "KosmosGLayoutEntityMask": (315, 130),
                     "ConditioningSetMask": (315, 102), "ConditioningCombine": (230, 46)})
    mw.MODEL_LINKS[SEG] = ("controlnet", "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/"
                                         "resolve/main/" + SEG)
    base = [
        Node(1, "CheckpointLoaderSimple", (0, 100), {"ckpt_name": mw.SD15}),
        Node(3, "KosmosGLoader", (0, 260), {"model_name": mw.KOSMOS_G, "dtype": "auto"}),
        Node(4, "KosmosGPromptToLayout", (0, 420), {"text": SHEEP, "width": 512, "height": 512,
                                                    "palette": "coco_panoptic_133", "sample": False, "seed": 0}),
        Node(5, "KosmosGTextEncode", (460, 100), {"text": SHEEP}, {"kosmos_g": (3, 0)},
             title="KOSMOS-G Text Encode (Positive)"),
        Node(6, "KosmosGTextEncode", (460, 360), {"text": ""}, {"kosmos_g": (3, 0)},
             title="KOSMOS-G Text Encode (Negative)"),
        Node(11, "ControlNetLoader", (460, 620), {"control_net_name": SEG}),
    ]

    def tail(positive):
        return [
            Node(12, "ControlNetApplyAdvanced", (920, 360), {"strength": 1.0, "start_percent": 0.0, "end_percent": 0.9},
                 {"positive": positive, "negative": (6, 0), "control_net": (11, 0), "image": (4, 0), "vae": (1, 2)}),
            Node(7, "EmptyLatentImage", (920, 660), {"width": 512, "height": 512, "batch_size": 1}),
            Node(8, "KSampler", (1300, 100), dict(mw.SAMPLER),
                 {"model": (1, 0), "positive": (12, 0), "negative": (12, 1), "latent_image": (7, 0)}),
            Node(9, "VAEDecode", (1660, 100), {}, {"samples": (8, 0), "vae": (1, 2)}),
            Node(10, "SaveImage", (1660, 200), {"filename_prefix": "kosmos_g/layout"}, {"images": (9, 0)}),
        ]

    plain = Workflow(
        "Layout to ControlNet seg",
        "## Prompt -> layout -> ControlNet segmentation, with KOSMOS-G conditioning\n\n*Prompt to Layout* plans a "
        "segmentation map from the scene prompt (two separate sheep, the tree in front of the mountain, the cloud "
        "in the sky) and renders it in the COCO palette that the stock `control_v11p_sd15_seg` understands. The "
        "prompt itself is encoded by KOSMOS-G, whose conditioning goes through Apply ControlNet unchanged. Connect "
        "a *Load Layout Model* to plan with a trained model instead of the rules.\n\n"
        f"Models: `models/checkpoints/{mw.SD15}`, `models/kosmos_g/{mw.KOSMOS_G}`, `models/controlnet/{SEG}`.",
        base + tail((5, 0)),
    )
    regional = Workflow(
        "Layout with regional prompts",
        "## Layout + regional prompt for one entity\n\nAs *Layout to ControlNet seg*, plus an entity mask: *Layout "
        "Entity Mask* cuts the mask of `sheep` (every sheep; `sheep 2/2` for one) out of the layout, and the stock "
        "*Conditioning (Set Mask)* restricts a second KOSMOS-G prompt to it. The entity list output of Prompt to "
        "Layout shows the names and labels you can use.",
        base + [
            Node(13, "KosmosGLayoutEntityMask", (460, 760), {"entity": "sheep", "width": 512, "height": 512},
                 {"layout": (4, 2)}),
            Node(14, "KosmosGTextEncode", (460, 900), {"text": "a fluffy white sheep, detailed wool"},
                 {"kosmos_g": (3, 0)}, title="KOSMOS-G Text Encode (Sheep region)"),
            Node(15, "ConditioningSetMask", (920, 760), {"strength": 1.0, "set_cond_area": "default"},
                 {"conditioning": (14, 0), "mask": (13, 0)}),
            Node(16, "ConditioningCombine", (920, 100), {}, {"conditioning_1": (5, 0), "conditioning_2": (15, 0)}),
        ] + tail((16, 0)),
    )
    return [plain, regional]


def main() -> None:
    sys.path.insert(0, str(HERE))
    import make_workflows as mw

    parser = argparse.ArgumentParser(description="write workflows/layout_*.json and their API twins")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="URL of a running ComfyUI with the pack")
    source.add_argument("--object-info", type=Path, help="a saved /object_info JSON")
    args = parser.parse_args()
    if args.server:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as response:  # noqa: S310 (local)
            object_info = json.load(response)
    else:
        object_info = json.loads(args.object_info.read_text(encoding="utf-8"))
    for wf in _specs(mw):
        mw._write(WORKFLOWS / f"{wf.name}.json", mw.to_ui(wf, object_info))
        mw._write(WORKFLOWS / "api" / f"{wf.name}.json", mw.to_api(wf, object_info))


# -- tests without ComfyUI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_layout_workflow_files(name):
    ui, api = load(WORKFLOWS / f"{name}.json"), load(WORKFLOWS / "api" / f"{name}.json")
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"] and nodes[src]["outputs"][src_slot]["type"] == kind
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
    assert {k: v["class_type"] for k, v in api.items()} == {
        str(n["id"]): n["type"] for n in ui["nodes"] if n["type"] != "MarkdownNote"}
    types = {v["class_type"] for v in api.values()}
    assert {"KosmosGPromptToLayout", "ControlNetApplyAdvanced", "KSampler", "KosmosGTextEncode"} <= types
    assert "CLIPTextEncode" not in types  # the prompt is encoded by KOSMOS-G
    apply = next(v for v in api.values() if v["class_type"] == "ControlNetApplyAdvanced")
    layout_id = next(k for k, v in api.items() if v["class_type"] == "KosmosGPromptToLayout")
    assert apply["inputs"]["image"] == [layout_id, 0]
    sampler = next(v["inputs"] for v in api.values() if v["class_type"] == "KSampler")
    assert sampler["sampler_name"] == "dpmpp_2m" and sampler["steps"] == 50 and sampler["cfg"] == 7.5


# -- tests with a real ComfyUI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layout_server(comfy_server):
    """The shared server, plus a seg ControlNet file (the random ControlNet under another name) and a tiny layout
    model in models/kosmos_g_layout/."""
    import torch

    from kosmos_g_core.layout.learned import save_layout_model
    from kosmos_g_core.layout.model import PRESETS, TextToLayoutModel, WordVocab

    models = comfy_server.base / "models"
    seg = models / "controlnet" / SEG
    if not seg.exists():
        source = next(p for p in (models / "controlnet").iterdir() if p.suffix == ".safetensors")
        seg.symlink_to(source.resolve())
    (models / "kosmos_g_layout").mkdir(exist_ok=True)
    torch.manual_seed(0)
    save_layout_model(models / "kosmos_g_layout" / "tiny_layout.safetensors", TextToLayoutModel(PRESETS["tiny"]),
                      WordVocab.build([SHEEP], 256))
    return comfy_server


def _small(prompt: dict) -> dict:
    """The shipped graph at test size: 64x64, 2 steps (random weights: only the plumbing is under test)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "KSampler":
            inputs["steps"] = 2
        if node["class_type"] in ("EmptyLatentImage", "KosmosGPromptToLayout", "KosmosGLayoutEntityMask"):
            inputs["width"], inputs["height"] = 64, 64
    return prompt


def _error_text(entry: dict) -> str:
    return json.dumps([m for m in entry["status"]["messages"] if m[0] == "execution_error"])


def test_object_info_lists_the_layout_nodes(layout_server):
    info = layout_server.get("/object_info")
    for node in ("KosmosGPromptToLayout", "KosmosGLayoutToImage", "KosmosGImageToLayout", "KosmosGLayoutEntityMask",
                 "KosmosGLayoutModelLoader", "KosmosGLayoutFaithfulness"):
        assert node in info, node
    assert info["KosmosGPromptToLayout"]["output"] == ["IMAGE", "MASK", "KOSMOS_G_LAYOUT", "STRING"]
    spec = info["KosmosGLayoutModelLoader"]["input"]["required"]["model_name"]
    options = spec[1].get("options") if spec[0] == "COMBO" else spec[0]  # V3 combos: ["COMBO", {"options": [...]}]
    assert "tiny_layout.safetensors" in options


@pytest.mark.parametrize("name", NAMES)
def test_ui_converts_to_its_api_twin(layout_server, test_helper, name):
    converter = test_helper("workflow_format")
    info = layout_server.get("/object_info")
    assert converter.ui_to_api(load(WORKFLOWS / f"{name}.json"), info) == load(WORKFLOWS / "api" / f"{name}.json")


@pytest.mark.parametrize("name", NAMES)
def test_layout_workflow_runs(layout_server, name):
    prompt = _small(load(WORKFLOWS / "api" / f"{name}.json"))
    entry = layout_server.run(prompt)
    assert entry["status"]["status_str"] == "success", _error_text(entry) + layout_server.log()[-3000:]
    layout_id = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGPromptToLayout")
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    assert entry["outputs"][layout_id]["images"], "the layout preview is shown in the graph"
    assert entry["outputs"][save_id]["images"]


def test_layout_model_and_conversions(layout_server):
    prompt = {
        "1": {"class_type": "KosmosGLayoutModelLoader", "inputs": {"model_name": "tiny_layout.safetensors"}},
        "2": {"class_type": "KosmosGPromptToLayout",
              "inputs": {"text": SHEEP, "width": 64, "height": 64, "palette": "ade20k_150", "layout_model": ["1", 0],
                         "sample": True, "seed": 3}},
        "3": {"class_type": "KosmosGPromptToLayout",
              "inputs": {"text": SHEEP, "width": 64, "height": 64, "palette": "coco_stuff_171"}},
        "4": {"class_type": "KosmosGImageToLayout", "inputs": {"image": ["3", 0], "palette": "auto", "prompt": SHEEP}},
        "5": {"class_type": "KosmosGLayoutToImage", "inputs": {"layout": ["4", 0], "palette": "coco_panoptic_133"}},
        "6": {"class_type": "KosmosGLayoutEntityMask", "inputs": {"layout": ["4", 0], "entity": "sheep 2/2"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["6", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    entry = layout_server.run(prompt)
    assert entry["status"]["status_str"] == "success", _error_text(entry)
    assert entry["outputs"]["2"]["images"] and entry["outputs"]["9"]["images"]


@pytest.mark.parametrize(("prompt", "expected"), [
    ({"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
      "2": {"class_type": "KosmosGImageToLayout", "inputs": {"image": ["1", 0], "palette": "coco_panoptic_133"}},
      "3": {"class_type": "KosmosGLayoutToImage", "inputs": {"layout": ["2", 0], "palette": "ade20k_150"}},
      "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}},
     "is not a coco_panoptic_133 layout"),
    ({"1": {"class_type": "KosmosGPromptToLayout",
            "inputs": {"text": SHEEP, "width": 64, "height": 64, "palette": "coco_panoptic_133"}},
      "2": {"class_type": "KosmosGLayoutEntityMask", "inputs": {"layout": ["1", 2], "entity": "sheeep"}},
      "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
      "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}},
     "unknown class name 'sheeep'"),
])
def test_clear_errors_in_comfyui(layout_server, prompt, expected):
    entry = layout_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert expected in _error_text(entry)


if __name__ == "__main__":
    main()
