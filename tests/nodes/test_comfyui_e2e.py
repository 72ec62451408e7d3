"""End to end in a real ComfyUI (COMFYUI_PATH): the pack loads, every shipped API workflow runs, bad inputs give
clear messages and the server keeps serving. Skipped without COMFYUI_PATH.

Workflows are shrunk to 64x64 and 2 steps. A probe node (comfy_probe_nodes.py) is spliced in front of each KSampler's
MODEL input; it records every U-Net call, so the test can assert that positive and negative went through the U-Net
together: with dpmpp_2m (one model evaluation per step) 2 steps must give exactly 2 calls, each of batch 2 (positive
and negative; more with regional conditioning). The layout workflows of nodes/layout_nodes.py run here too.

The SDXL workflows run the same way with a tiny SDXL KOSMOS-G file and random SDXL-shaped models (comfy_models.py),
and the tests at the end compare the SDXL conditioning with what ComfyUI's own SDXL text encode nodes give, follow
its pooled vector and size conditioning into the U-Net's ADM input, and check the messages for a file of one base
with the other's MODEL. The last test runs the SDXL subject-driven workflow with a tiny SDXL file made by the trainer
(stages 2 and 3 of the shipped tiny SDXL configs).
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
API_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "api").glob("*.json"))
KOSMOS_NODE_IDS = {"KosmosGLoader", "KosmosGInterleavedPrompt", "KosmosGPromptBatch", "KosmosGEncode",
                   "KosmosGTextEncode", "KosmosGConcatCLIP", "KosmosGCheckModel"}
STEPS = 2


def _error(entry: dict[str, Any]) -> dict[str, Any] | None:
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return data
    return None


def shrink(prompt: dict[str, Any], probe_log: Path) -> dict[str, Any]:
    """64x64, 2 steps, and a U-Net probe in front of every KSampler."""
    prompt = copy.deepcopy(prompt)
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = STEPS
            probe_id = f"{node_id}9000"
            prompt[probe_id] = {"class_type": "KosmosGTestUNetProbe",
                                "inputs": {"model": node["inputs"]["model"], "log_path": str(probe_log)}}
            node["inputs"]["model"] = [probe_id, 0]
    return prompt


def test_pack_imports_without_error(comfy_server):
    info = comfy_server.get("/object_info")
    missing = KOSMOS_NODE_IDS - info.keys()
    assert not missing, f"nodes not registered: {missing}\n{comfy_server.log()[-3000:]}"
    for node_id in KOSMOS_NODE_IDS:
        assert info[node_id]["category"].startswith("kosmos_g/")
        assert info[node_id]["description"]
    log = comfy_server.log()
    assert "IMPORT FAILED" not in log, log[-3000:]
    assert comfy_server.get("/models/kosmos_g"), "models/kosmos_g is not registered or is empty"
    templates = comfy_server.get("/api/workflow_templates")
    assert sorted(templates["kosmos_g"]) == sorted(p.stem for p in API_WORKFLOWS)
    for name in templates["kosmos_g"]:  # the URLs the frontend requests for the template card and the graph
        for suffix, kind in ((".jpg", "image/jpeg"), (".json", "application/json")):
            url = comfy_server.url + "/api/workflow_templates/kosmos_g/" + urllib.parse.quote(name + suffix)
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (the test's own local server)
                assert response.status == 200 and response.headers["Content-Type"].startswith(kind), url


# ------------------------------------------------------------------------------------------ bad inputs


def _base_prompt() -> dict[str, Any]:
    """The KOSMOS-G part of the subject-driven workflow (load, image, builder, encode) ending in an info node, so a
    bad input costs no U-Net run."""
    workflow = json.loads((REPO_ROOT / "workflows" / "api" / "KOSMOS-G subject-driven generation.json").read_text())
    prompt = {k: v for k, v in workflow.items()
              if v["class_type"] in ("KosmosGLoader", "LoadImage", "KosmosGInterleavedPrompt", "KosmosGEncode")}
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt["950"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": [encode, 0], "b": [encode, 1]}}
    return prompt


def _node(prompt: dict[str, Any], class_type: str) -> dict[str, Any]:
    return next(node for node in prompt.values() if node["class_type"] == class_type)


def _with_image(prompt: dict[str, Any], width: int, height: int, channels: int) -> dict[str, Any]:
    prompt["900"] = {"class_type": "KosmosGTestImage",
                     "inputs": {"width": width, "height": height, "channels": channels, "batch": 1}}
    _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["image_1"] = ["900", 0]
    return prompt


def _expect_execution_error(client, prompt: dict[str, Any], *fragments: str) -> str:
    entry = client.run(prompt)
    assert entry["status"]["status_str"] == "error", "the bad input was accepted"
    error = _error(entry)
    message = error["exception_message"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error shown to the user: {message}"
    return message


def test_missing_model_file_is_refused_at_validation(comfy_server, comfyui_dir):
    """One error, on model_name (not one per input, which flagged the dtype widget too), listing the files there and
    naming the unconverted official .pt with a convert command that works as written from the ComfyUI folder."""
    prompt = _base_prompt()
    loader = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGLoader")
    prompt[loader]["inputs"]["model_name"] = "kosmos_g_v1.safetensors"
    status, answer = comfy_server.queue(prompt)
    assert status == 400
    errors = answer["node_errors"][loader]["errors"]
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "model_name", errors
    message = errors[0]["details"]
    assert "kosmos_g_v1.safetensors" in message and "not found in models/kosmos_g/" in message, message
    assert "kosmos-g.safetensors" in message, "the message should list the files that are there"
    assert "also holds 'checkpoint_final.pt'" in message and "needs converting" in message, message

    command = message.split("`")[1]
    out = comfy_server.base / "models" / "kosmos_g" / "checkpoint_final.safetensors"
    try:
        run = subprocess.run(shlex.split(command), cwd=comfyui_dir, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{command}\n{run.stderr}"
        assert out.is_file()
    finally:
        out.unlink(missing_ok=True)


def test_bad_dtype_is_one_error_on_dtype(comfy_server):
    prompt = _base_prompt()
    loader = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGLoader")
    prompt[loader]["inputs"]["dtype"] = "fp8"
    status, answer = comfy_server.queue(prompt)
    assert status == 400
    errors = answer["node_errors"][loader]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["dtype"], errors


def test_sd15_checkpoint_in_kosmos_folder(comfy_server):
    prompt = _base_prompt()
    _node(prompt, "KosmosGLoader")["inputs"]["model_name"] = "sd15-in-wrong-folder.safetensors"
    _expect_execution_error(comfy_server, prompt, "Stable Diffusion checkpoint", "models/checkpoints/",
                            "models/kosmos_g/")


def test_mllm_only_checkpoint_must_be_trained_first(comfy_server):
    prompt = _base_prompt()
    _node(prompt, "KosmosGLoader")["inputs"]["model_name"] = "kosmos2-mllm-only.safetensors"
    _expect_execution_error(comfy_server, prompt, "no AlignerNet", "stage 2", "stage 3")


def test_two_placeholders_one_image(comfy_server):
    prompt = _base_prompt()
    _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["text"] = "<i> wearing <i>"
    _expect_execution_error(comfy_server, prompt, "2 <i> placeholders", "1 image was given", "image_1")


def test_empty_prompt(comfy_server):
    prompt = _base_prompt()
    builder = _node(prompt, "KosmosGInterleavedPrompt")["inputs"]
    builder["text"] = ""
    del builder["image_1"]
    _expect_execution_error(comfy_server, prompt, "the prompt is empty")


@pytest.mark.parametrize("channels", [4, 1], ids=["rgba", "greyscale"])
def test_rgba_and_greyscale_images_are_accepted(comfy_server, channels):
    entry = comfy_server.run(_with_image(_base_prompt(), 80, 72, channels))
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    info = entry["outputs"]["950"]
    assert info["a"][0]["shape"] == [1, 77, 768] and info["b"][0]["shape"] == [1, 77, 768]


def test_one_pixel_image(comfy_server):
    _expect_execution_error(comfy_server, _with_image(_base_prompt(), 1, 1, 3), "image_1 is 1x1 pixels", "at least 16x16")


def test_five_channel_image(comfy_server):
    _expect_execution_error(comfy_server, _with_image(_base_prompt(), 64, 64, 5), "image_1 has 5 channels")


def test_prompt_longer_than_the_model_reads(comfy_server):
    prompt = _base_prompt()
    _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["text"] = "<i> " + "a very long description " * 200
    _expect_execution_error(comfy_server, prompt, "tokens long", "reads at most 510", "shorten the text")


def test_prompt_at_the_length_limit_encodes(comfy_server, kosmos_tokenizer):
    """The node's limit is the core's: a prompt of exactly 510 positions (AlignerNet's 512 minus 2) encodes."""
    from kosmos_g_core.prompt import prompt_tokens

    prompt = _base_prompt()
    text = "<i>" + " dog" * (510 - 1 - 66)
    assert len(prompt_tokens(text.replace("<i>", ""), kosmos_tokenizer)[0]) + 66 == 510
    _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["text"] = text
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]


def test_literal_placeholder_in_the_negative_is_text(comfy_server):
    """KOSMOS-G Encode's negative is plain text, as in the official code and the core: "<i>" is not refused."""
    prompt = _base_prompt()
    _node(prompt, "KosmosGEncode")["inputs"]["negative"] = "an <i> tag, blurry"
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    assert entry["outputs"]["950"]["b"][0]["shape"] == [1, 77, 768]


def test_prompt_batch_and_text_encode_negative(comfy_server):
    """A Prompt Batch of 2 gives (2, 77, 768) positive and negative; KOSMOS-G Text Encode of "" is the same null
    embedding as Encode's negative, in float32 like CLIPTextEncode's output."""
    prompt = _base_prompt()
    builder = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGInterleavedPrompt")
    prompt["960"] = {"class_type": "KosmosGInterleavedPrompt", "inputs": {"text": "a red car"}}
    prompt["961"] = {"class_type": "KosmosGPromptBatch", "inputs": {"prompt_1": [builder, 0], "prompt_2": ["960", 0]}}
    _node(prompt, "KosmosGEncode")["inputs"]["prompt"] = ["961", 0]
    prompt["962"] = {"class_type": "KosmosGTextEncode", "inputs": {"text": "", "kosmos_g": ["3", 0]}}
    prompt["963"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": ["962", 0]}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    positive, negative = entry["outputs"]["950"]["a"][0], entry["outputs"]["950"]["b"][0]
    assert positive["shape"] == negative["shape"] == [2, 77, 768]
    assert positive["dtype"] == negative["dtype"] == "torch.float32"
    null = entry["outputs"]["963"]["a"][0]
    assert null["shape"] == [1, 77, 768]
    assert null["sum"] * 2 == pytest.approx(negative["sum"], rel=1e-4, abs=1e-3)


def _sampling_with(family: str, check: bool) -> dict[str, Any]:
    """KOSMOS-G conditioning into KSampler with a MODEL of another family, through Check SD1.5 Model or not."""
    prompt = _base_prompt()
    del prompt["950"]
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt["970"] = {"class_type": "KosmosGTestTinyUNet", "inputs": {"family": family}}
    model = ["970", 0]
    if check:
        prompt["971"] = {"class_type": "KosmosGCheckModel", "inputs": {"model": model}}
        model = ["971", 0]
    prompt["972"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["973"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": [encode, 0], "negative": [encode, 1], "latent_image": ["972", 0], "seed": 0,
        "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["974"] = {"class_type": "KosmosGTestLatentSink", "inputs": {"samples": ["973", 0]}}
    return prompt


@pytest.mark.parametrize(("family", "exception", "fragment", "width"), [
    ("SDXL", "KeyError", "pooled_output", 2048),
    ("SD2", "RuntimeError", "mat1 and mat2 shapes cannot be multiplied", 1024),
])
def test_other_model_family_without_and_with_the_check_node(comfy_server, family, exception, fragment, width):
    """What docs/nodes.md and the README tell a user who samples SDXL or SD2 with KOSMOS-G conditioning: the error
    stock KSampler stops with (SDXL reads CLIP's pooled output, which KOSMOS-G does not make; SD2's cross-attention
    is 1024-d), and the plain message of Check SD1.5 Model, which stops before it."""
    entry = comfy_server.run(_sampling_with(family, check=False))
    error = _error(entry)
    assert entry["status"]["status_str"] == "error" and error["node_type"] == "KSampler", error
    assert error["exception_type"].endswith(exception) and fragment in error["exception_message"], error
    _expect_execution_error(comfy_server, _sampling_with(family, check=True),
                            f"takes {width}-dimensional text conditioning", "Stable Diffusion 1.5")


def test_log_names_the_loaded_model(comfy_server):
    """ComfyUI logs a loaded model by its class name: it must say KOSMOS-G, not an internal wrapper's name."""
    entry = comfy_server.run(_base_prompt())
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    log = comfy_server.log()
    assert "Requested to load KosmosGEncoder" in log and "PatcherRoot" not in log, log[-3000:]


def test_server_still_serves_after_errors(comfy_server):
    # Runs after the bad inputs above and the workflow runs below it in this file (pytest keeps file order): the
    # workflows then also prove that sampling still works after every refused prompt.
    assert comfy_server.process.poll() is None
    assert comfy_server.get("/system_stats")
    prompt = _base_prompt()
    _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["text"] = "<i> on a beach at sunset"
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_with_one_unet_batch(comfy_server, workflow, tmp_path):
    probe_log = tmp_path / "unet_calls.jsonl"
    prompt = shrink(json.loads(workflow.read_text()), probe_log)
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry), indent=1)[:3000]
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    saved = [image for image in images if image.get("type") == "output"]
    assert saved, f"no image was saved: {entry['outputs']}"
    for image in images:  # saved ones in output/, previews in temp/
        assert (comfy_server.base / image["type"] / image["subfolder"] / image["filename"]).is_file(), image
    calls = [json.loads(line) for line in probe_log.read_text().splitlines()]
    # One U-Net call per step means every conditioning entry, negative included, was in the same batch.
    assert len(calls) == STEPS, f"positive and negative were not batched together: {calls}"
    sdxl = " SDXL " in workflow.name
    for call in calls:
        assert call["x"][0] >= 2 and call["context"][0] == call["x"][0], calls
        assert call["context"][2] == (2048 if sdxl else 768), calls
        assert call["context"][1] % 77 == 0, calls
        # SDXL's ADM input (pooled 1280 + 6 x 256 sizes) is filled from the KOSMOS-G conditioning; SD1.5 has none.
        assert call.get("y") == ([call["x"][0], 2816] if sdxl else None), calls


# ------------------------------------------------------------------------------------------ SDXL


SDXL_SUBJECT = REPO_ROOT / "workflows" / "api" / "KOSMOS-G SDXL subject-driven generation.json"


def _sdxl_base_prompt() -> dict[str, Any]:
    """The KOSMOS-G part of the SDXL subject-driven workflow (load, image, builder, encode) ending in an info node."""
    workflow = json.loads(SDXL_SUBJECT.read_text())
    prompt = {k: v for k, v in workflow.items()
              if v["class_type"] in ("KosmosGLoader", "LoadImage", "KosmosGInterleavedPrompt", "KosmosGEncode")}
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt["950"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": [encode, 0], "b": [encode, 1]}}
    return prompt


def test_sdxl_conditioning_is_what_comfyui_s_sdxl_text_encoders_give(comfy_server):
    """With an SDXL file, KOSMOS-G Encode gives what CLIP Text Encode (SDXL) gives (a (1, 77, 2048) context, a
    (1, 1280) pooled_output and the same six size values), and KOSMOS-G Text Encode what plain CLIP Text Encode with
    the SDXL checkpoint's CLIP gives (context and pooled_output, no sizes): same keys, shapes and dtypes."""
    prompt = _sdxl_base_prompt()
    _node(prompt, "KosmosGEncode")["inputs"].update(width=896, height=1152, crop_w=16, crop_h=8, target_width=832,
                                                    target_height=1216)
    loader = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGLoader")
    prompt["960"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}
    prompt["961"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["960", 1], "width": 896, "height": 1152, "crop_w": 16, "crop_h": 8, "target_width": 832,
        "target_height": 1216, "text_g": "a dog in the jungle", "text_l": "a dog in the jungle"}}
    prompt["962"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["960", 1], "text": "a dog in the jungle"}}
    prompt["963"] = {"class_type": "KosmosGTextEncode", "inputs": {"kosmos_g": [loader, 0], "text": "a dog"}}
    prompt["964"] = {"class_type": "KosmosGTextEncode", "inputs": {"kosmos_g": [loader, 0], "text": ""}}
    prompt["965"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": ["961", 0], "b": ["962", 0]}}
    prompt["966"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": ["963", 0], "b": ["964", 0]}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    (positive,), (negative,) = entry["outputs"]["950"]["a"], entry["outputs"]["950"]["b"]
    (stock_sdxl,), (stock_plain,) = entry["outputs"]["965"]["a"], entry["outputs"]["965"]["b"]
    (text,), (text_null,) = entry["outputs"]["966"]["a"], entry["outputs"]["966"]["b"]

    def form(info):
        return info["shape"], info["dtype"], info["keys"], info["pooled_shape"], info["pooled_dtype"]

    assert form(positive) == form(negative) == form(stock_sdxl)
    assert positive["sizes"] == negative["sizes"] == stock_sdxl["sizes"] == {
        "width": 896, "height": 1152, "crop_w": 16, "crop_h": 8, "target_width": 832, "target_height": 1216}
    assert positive["shape"] == [1, 77, 2048] and positive["pooled_shape"] == [1, 1280]
    assert form(text) == form(text_null) == form(stock_plain) and text["keys"] == ["pooled_output"]
    # KOSMOS-G Text Encode of "" is the null embedding, the negative of KOSMOS-G Encode (pooled vector included).
    assert text_null["sum"] == pytest.approx(negative["sum"], rel=1e-4, abs=1e-3)
    assert text_null["pooled_sum"] == pytest.approx(negative["pooled_sum"], rel=1e-4, abs=1e-3)
    assert positive["pooled_sum"] != pytest.approx(negative["pooled_sum"])
    assert "SDXL conditioning (77 x 2048 context + 1280 pooled)" in comfy_server.log()


def test_encode_size_inputs_are_clip_text_encode_sdxl_s(comfy_server):
    """KOSMOS-G Encode's size inputs have CLIP Text Encode (SDXL)'s names, order, defaults and bounds, and are
    advanced inputs (they do nothing with an SD1.5 file)."""
    info = comfy_server.get("/object_info")
    ours, stock = info["KosmosGEncode"]["input"]["optional"], info["CLIPTextEncodeSDXL"]["input"]["required"]
    names = ["width", "height", "crop_w", "crop_h", "target_width", "target_height"]
    assert [n for n in info["KosmosGEncode"]["input_order"]["optional"] if n in names] == names
    for name in names:
        assert ours[name][0] == stock[name][0] == "INT"
        for key in ("default", "min", "max"):
            assert ours[name][1][key] == stock[name][1][key], (name, key)
        assert ours[name][1]["advanced"] is True


def test_an_sd15_file_ignores_the_size_inputs(comfy_server):
    """With an SD1.5 file, KOSMOS-G Encode gives what it always gave: (1, 77, 768) and an empty dict, whatever the
    SDXL size inputs say."""
    prompt = _base_prompt()
    _node(prompt, "KosmosGEncode")["inputs"].update(width=640, height=480, crop_w=8, crop_h=8)
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    for info in (entry["outputs"]["950"]["a"][0], entry["outputs"]["950"]["b"][0]):
        assert info["shape"] == [1, 77, 768] and info["keys"] == [] and info["sizes"] == {}


def _size_embedding(values: list[int]) -> list[float]:
    """SDXL's size part of the ADM input: each value through a 256-d sinusoidal embedding ([cos | sin], frequencies
    10000^(-i/128); comfy's timestep_embedding), in encode_adm's order."""
    import numpy as np

    freqs = np.exp(-np.log(10000.0) * np.arange(128, dtype=np.float32) / 128)
    return np.concatenate([np.concatenate([np.cos(v * freqs), np.sin(v * freqs)]) for v in values]).tolist()


def test_sdxl_pooled_vector_and_sizes_reach_the_unet(comfy_server, tmp_path):
    """The shrunk SDXL workflow (a 64x64 latent) with sizes set on KOSMOS-G Encode: the U-Net's ADM input holds
    KOSMOS-G's pooled vectors (positive and negative) and the embedded sizes, not the latent's 64 x 64."""
    probe_log = tmp_path / "unet_calls.jsonl"
    prompt = shrink(json.loads(SDXL_SUBJECT.read_text()), probe_log)
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt[encode]["inputs"].update(width=1024, height=768, crop_w=0, crop_h=32, target_width=960, target_height=704)
    prompt["950"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": [encode, 0], "b": [encode, 1]}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    (positive,), (negative,) = entry["outputs"]["950"]["a"], entry["outputs"]["950"]["b"]
    calls = [json.loads(line) for line in probe_log.read_text().splitlines()]
    assert len(calls) == STEPS
    for call in calls:
        assert sorted(call["y_pooled_sums"]) == pytest.approx(sorted([positive["pooled_sum"], negative["pooled_sum"]]),
                                                             rel=1e-4, abs=1e-3)
        # encode_adm's order: height, width, crop_h, crop_w, target_height, target_width
        assert call["y_sizes"] == pytest.approx(_size_embedding([768, 1024, 32, 0, 704, 960]), abs=1e-3)


def _sampling_with_file(family: str, kosmos_file: str, check: bool) -> dict[str, Any]:
    """`_sampling_with`, with the named KOSMOS-G file, and Check Model connected to that file."""
    prompt = _sampling_with(family, check)
    _node(prompt, "KosmosGLoader")["inputs"]["model_name"] = kosmos_file
    if check:
        loader = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGLoader")
        prompt["971"]["inputs"]["kosmos_g"] = [loader, 0]
    return prompt


@pytest.mark.parametrize(("family", "kosmos_file", "exception", "fragment", "message"), [
    ("SDXL", "kosmos-g.safetensors", "KeyError", "pooled_output",
     "this KOSMOS-G file (kosmos-g.safetensors) is for SD1.5 (768-d) but the connected MODEL (SDXL) is SDXL "
     "(2048-d context + 1280-d pooled)"),
    ("SD15", "kosmos-g-sdxl.safetensors", "RuntimeError", "mat1 and mat2 shapes cannot be multiplied",
     "this KOSMOS-G file (kosmos-g-sdxl.safetensors) is for SDXL (2048-d context + 1280-d pooled) but the connected "
     "MODEL (SD15) is SD1.5 (768-d)"),
], ids=["sd15-file-sdxl-model", "sdxl-file-sd15-model"])
def test_a_file_for_one_base_with_the_other_s_model(comfy_server, family, kosmos_file, exception, fragment, message):
    """What KSampler says when the KOSMOS-G file's base and the MODEL's differ, and the plain message Check Model gives
    instead when the file is connected to it."""
    entry = comfy_server.run(_sampling_with_file(family, kosmos_file, check=False))
    error = _error(entry)
    assert entry["status"]["status_str"] == "error" and error["node_type"] == "KSampler", error
    assert error["exception_type"].endswith(exception) and fragment in error["exception_message"], error
    _expect_execution_error(comfy_server, _sampling_with_file(family, kosmos_file, check=True), message,
                            "Load a checkpoint of the same base as the KOSMOS-G file")


def test_check_model_passes_a_matching_pair(comfy_server):
    """Check Model with the file connected lets SDXL file + SDXL MODEL (and SD1.5 + SD1.5) through to sampling."""
    for family, kosmos_file in (("SDXL", "kosmos-g-sdxl.safetensors"), ("SD15", "kosmos-g.safetensors")):
        entry = comfy_server.run(_sampling_with_file(family, kosmos_file, check=True))
        assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]


def test_concat_clip_with_an_sdxl_file_and_the_sdxl_clip(comfy_server):
    """A LoRA's trigger words with SDXL: the SDXL CLIP's tokens follow KOSMOS-G's, KOSMOS-G's pooled vector stays."""
    prompt = _sdxl_base_prompt()
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt["960"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}
    prompt["961"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["960", 1], "text": "watercolor style"}}
    prompt["962"] = {"class_type": "KosmosGConcatCLIP", "inputs": {
        "kosmos_g_conditioning": [encode, 0], "clip_conditioning": ["961", 0], "clip_strength": 1.0}}
    prompt["963"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": ["962", 0]}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry))[:2000]
    (joined,), (positive,) = entry["outputs"]["963"]["a"], entry["outputs"]["950"]["a"]
    assert joined["shape"] == [1, 154, 2048] and joined["pooled_sum"] == positive["pooled_sum"]
    assert joined["sizes"] == positive["sizes"]


# ------------------------------------------------------------------------------- a file made by the trainer (SDXL)


TRAINED_SDXL_NAME = "kosmos-g-sdxl-trained.safetensors"


@pytest.fixture(scope="module")
def trainer_made_sdxl(tmp_path_factory, comfy_server, tokenizer_dir) -> Path:
    """A tiny SDXL KOSMOS-G file made by the trainer, as docs/training.md says: the shipped tiny SDXL configs of
    stage 2 (from an AlignerNet-less init, the SDXL heads chosen from the base) then stage 3, on a tiny random SDXL
    diffusers folder and synthetic shards, a few steps each; the stage-3 export copied to the server's
    models/kosmos_g/ (ComfyUI lists a folder again when it changes)."""
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_init, write_tiny_sdxl
    from training.train import main

    root = tmp_path_factory.mktemp("trainer_made_sdxl")
    write_tiny_sdxl(root / "sdxl")
    for kind in ("captions", "compositional"):
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "stage1.safetensors", tokenizer_dir, aligner=False)
    configs = REPO_ROOT / "training" / "configs" / "tiny"
    common = ["run.max_steps=3", "checkpoint.every=0", "log.tensorboard=false", 'log.progress="lines"',
              f'sd15.path="{root / "sdxl"}"']
    main(["--config", str(configs / "stage2_sdxl.toml"), *common, f'run.out_dir="{root / "stage2"}"',
          f'model.init="{root / "stage1.safetensors"}"',
          f'data.sources=[{{kind = "captions", shards = "{root / "shards" / "captions"}"}}]'])
    main(["--config", str(configs / "stage3_sdxl.toml"), *common, f'run.out_dir="{root / "stage3"}"',
          f'model.init="{root / "stage2" / "export.safetensors"}"', "sample.every=0",
          f'data.sources=[{{kind = "compositional", shards = "{root / "shards" / "compositional"}"}}]'])
    target = comfy_server.base / "models" / "kosmos_g" / TRAINED_SDXL_NAME
    target.write_bytes((root / "stage3" / "export.safetensors").read_bytes())
    return target


def test_a_trainer_made_sdxl_file_runs_the_sdxl_workflow_through_stock_sdxl_nodes(comfy_server, trainer_made_sdxl,
                                                                                  tmp_path):
    """The shipped SDXL subject-driven workflow (stock Load Checkpoint, KSampler, VAE Decode, Save Image) with the
    trainer's SDXL file: its conditioning is the core's encode of the same prompt with that file (context and
    pooled vector, positive and negative), and it reaches the SDXL U-Net's cross-attention and ADM input."""
    import torch
    from PIL import Image

    from kosmos_g_core import InterleavedPrompt, load_checkpoint

    probe_log = tmp_path / "unet_calls.jsonl"
    prompt = shrink(json.loads(SDXL_SUBJECT.read_text()), probe_log)
    # fp32, as the file was exported, so the core's encode below is the same computation (auto stores fp16 on CPU).
    _node(prompt, "KosmosGLoader")["inputs"].update(model_name=trainer_made_sdxl.name, dtype="fp32")
    encode = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    prompt["950"] = {"class_type": "KosmosGTestConditioningInfo", "inputs": {"a": [encode, 0], "b": [encode, 1]}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(_error(entry), indent=1)[:3000]
    assert any(image.get("type") == "output" for output in entry["outputs"].values()
               for image in output.get("images", []))
    (positive,), (negative,) = entry["outputs"]["950"]["a"], entry["outputs"]["950"]["b"]
    assert positive["shape"] == negative["shape"] == [1, 77, 2048]
    assert positive["pooled_shape"] == negative["pooled_shape"] == [1, 1280]

    model = load_checkpoint(trainer_made_sdxl, dtype=torch.float32)
    text = _node(prompt, "KosmosGInterleavedPrompt")["inputs"]["text"]
    image = Image.open(comfy_server.base / "input" / "example.png").convert("RGB")
    cond, uncond = model.encode(InterleavedPrompt.from_text(text, [image]))
    with torch.inference_mode():
        expected = {"sum": [float(cond.double().sum()), float(uncond.double().sum())],
                    "pooled_sum": [float(model.pooled(cond).double().sum()), float(model.pooled(uncond).double().sum())]}
    for key, values in expected.items():
        assert [positive[key], negative[key]] == pytest.approx(values, rel=1e-4, abs=1e-3), key

    calls = [json.loads(line) for line in probe_log.read_text().splitlines()]
    assert len(calls) == STEPS
    for call in calls:
        assert call["context"][2] == 2048 and call.get("y") == [call["x"][0], 2816], calls
        assert sorted(call["y_pooled_sums"]) == pytest.approx(sorted(expected["pooled_sum"]), rel=1e-4, abs=1e-3)
