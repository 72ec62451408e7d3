"""The shipped workflows: each UI file (workflows/<name>.json, opens under Templates) has an API twin
(workflows/api/<name>.json) describing the same graph, with the paper's settings.

Structure is checked without ComfyUI; with COMFYUI_PATH every UI file is converted to API format through the real
server's /object_info (tests/nodes/workflow_format.py, the frontend's rules) and must equal its twin, and every node
type must exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.startswith("Layout "))
API_FILES = sorted(p for p in (WORKFLOWS / "api").glob("*.json") if not p.name.startswith("Layout "))
# The conversion check covers every shipped workflow, the layout ones included.
ALL_UI_FILES = sorted(WORKFLOWS.glob("*.json"))
FRONTEND_ONLY = {"MarkdownNote", "Note"}
EXPECTED = {"KOSMOS-G subject-driven generation", "KOSMOS-G multi-entity composition", "KOSMOS-G with ControlNet canny", "KOSMOS-G with a LoRA",
            "KOSMOS-G text to image", "KOSMOS-G image editing"}
EXPECTED_SDXL = {"KOSMOS-G SDXL subject-driven generation", "KOSMOS-G SDXL multi-entity composition",
                 "KOSMOS-G SDXL with ControlNet canny"}
SDXL_API_FILES = sorted(p for p in API_FILES if " SDXL " in p.name)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_ui_workflow_has_an_api_twin():
    assert {p.stem for p in UI_FILES} == {p.stem for p in API_FILES}
    assert EXPECTED | EXPECTED_SDXL <= {p.stem for p in UI_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_links_are_consistent(path):
    workflow = load(path)
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] == max(nodes)
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        output = nodes[src]["outputs"][src_slot]
        assert link_id in output["links"] and output["type"] == kind
        target = nodes[dst]["inputs"][dst_slot]
        assert target["link"] == link_id and target["type"] == kind
    orders = sorted(node["order"] for node in nodes.values())
    assert orders == list(range(len(nodes)))


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_graph_and_paper_settings(path):
    prompt = load(path)
    ui_ids = {str(n["id"]): n["type"] for n in load(WORKFLOWS / path.name)["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert {k: v["class_type"] for k, v in prompt.items()} == ui_ids
    for node in prompt.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in prompt, f"link to a missing node {value}"
    samplers = [n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler"]
    assert samplers
    for sampler in samplers:
        assert sampler["sampler_name"] == "dpmpp_2m" and sampler["scheduler"] == "normal"
        assert sampler["steps"] == 50 and 6.0 <= sampler["cfg"] <= 7.5
    size = 1024 if " SDXL " in path.name else 512  # each base at its own resolution
    for latent in (n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage"):
        assert (latent["width"], latent["height"]) == (size, size)
    assert "KosmosGLoader" in {n["class_type"] for n in prompt.values()}


@pytest.mark.parametrize("path", SDXL_API_FILES, ids=lambda p: p.stem)
def test_sdxl_workflows_pair_sdxl_files_and_check_them(path):
    """An SDXL workflow loads an SDXL checkpoint and an SDXL KOSMOS-G file, checks the MODEL against that file before
    sampling, and conditions SDXL on the latent's size (KOSMOS-G Encode's size inputs = the latent's 1024x1024)."""
    prompt = load(path)

    def one(class_type):
        (node,) = [n for n in prompt.values() if n["class_type"] == class_type]
        return node

    checkpoint, kosmos = one("CheckpointLoaderSimple"), one("KosmosGLoader")
    assert checkpoint["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert kosmos["inputs"]["model_name"] == "kosmos-g-sdxl.safetensors"
    ids = {id(n): k for k, n in prompt.items()}
    check = one("KosmosGCheckModel")["inputs"]
    assert check["model"] == [ids[id(checkpoint)], 0] and check["kosmos_g"] == [ids[id(kosmos)], 0]
    assert one("KSampler")["inputs"]["model"] == [next(k for k, n in prompt.items() if n["inputs"] is check), 0]
    encode, latent = one("KosmosGEncode")["inputs"], one("EmptyLatentImage")["inputs"]
    assert (encode["width"], encode["height"], encode["target_width"], encode["target_height"]) == \
        (latent["width"], latent["height"], latent["width"], latent["height"])
    assert (encode["crop_w"], encode["crop_h"]) == (0, 0)
    for node in prompt.values():
        if node["class_type"] == "ControlNetLoader":
            assert "xl" in node["inputs"]["control_net_name"]


def test_the_txt2img_workflow_has_no_clip_text_encode():
    types = {n["class_type"] for n in load(WORKFLOWS / "api" / "KOSMOS-G text to image.json").values()}
    assert "CLIPTextEncode" not in types and "KosmosGTextEncode" in types


@pytest.mark.parametrize("path", ALL_UI_FILES, ids=lambda p: p.stem)
def test_ui_converts_to_its_api_twin_through_object_info(comfy_server, test_helper, path):
    object_info = comfy_server.get("/object_info")
    converter = test_helper("workflow_format")
    workflow = load(path)
    for node in workflow["nodes"]:
        assert node["type"] in object_info or node["type"] in FRONTEND_ONLY, f"unknown node type {node['type']}"
    assert converter.ui_to_api(workflow, object_info) == load(WORKFLOWS / "api" / path.name)


@pytest.mark.parametrize("path", ALL_UI_FILES, ids=lambda p: p.stem)
def test_every_template_has_a_title_and_a_thumbnail(path, test_helper):
    """ComfyUI's frontend titles a pack's template by its file name and shows /api/workflow_templates/<pack>/<name>.jpg:
    the name must read as a title, and the JPEG must exist and be the schematic of this very graph."""
    from PIL import Image

    assert re.fullmatch(r"(KOSMOS-G|Layout) [A-Za-z0-9 ,-]+", path.stem), f"{path.stem!r} does not read as a title"
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail} missing: run python tests/nodes/workflow_thumbnails.py"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size == (512, 384)
        shipped = np.asarray(image.convert("RGB"), dtype=np.float32)
    drawn = np.asarray(test_helper("workflow_thumbnails").render(load(path), path.stem), dtype=np.float32)
    # JPEG noise is about 1.0-1.5 per channel; the two most alike shipped graphs differ by 2.1
    assert np.abs(shipped - drawn).mean() < 1.8, f"{thumbnail} is out of date: run python tests/nodes/workflow_thumbnails.py"
