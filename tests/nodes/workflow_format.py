"""UI-format (litegraph, what the ComfyUI editor saves) -> API-format (what POST /prompt takes), via /object_info.

ComfyUI has no Python converter (the frontend's `graphToPrompt` does it), so the tests carry this one. It follows the
frontend's rules for what this pack's workflows use:

* frontend-only nodes (Note, MarkdownNote, PrimitiveNode-free graphs) and muted/bypassed nodes are left out;
* `widgets_values` are positional, in the order of the node's widget inputs in /object_info (`input_order`,
  required then optional); an INT with `control_after_generate` (and any INT named seed / noise_seed) is followed by
  the "fixed/randomize/..." value, and a COMBO with `image_upload` by the upload button's value: both are skipped;
* an input that is linked takes `[str(source node id), source slot]` instead of a widget value;
* `_meta.title` is the node's title, or the node type's display name.
"""

from __future__ import annotations

from typing import Any

FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Frontend upload widgets that add a value after their combo in widgets_values.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "file_upload")


def _input_specs(info: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    order = info.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        inputs = info.get("input", {}).get(section, {}) or {}
        for name in order.get(section, list(inputs)):
            spec = inputs[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, options))
    return specs


def is_widget(kind: Any, options: dict[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def extra_widget_values(name: str, kind: Any, options: dict[str, Any]) -> int:
    """How many frontend-only values follow this widget's value in widgets_values."""
    if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
        return 1
    if (isinstance(kind, list) or kind == "COMBO") and any(options.get(k) for k in UPLOAD_OPTIONS):
        return 1
    return 0


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Convert a UI-format workflow; raises KeyError naming a node type missing from /object_info."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY_TYPES or node.get("mode", 0) in (2, 4):
            continue
        if node_type not in object_info:
            raise KeyError(f"node {node['id']}: type {node_type!r} is not registered in this ComfyUI")
        info = object_info[node_type]
        linked = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, dst, _, _ = links[slot["link"]]
                assert dst == node["id"], f"link {slot['link']} does not end at node {node['id']}"
                linked[slot["name"]] = [str(src), src_slot]
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        position = 0
        for name, kind, options in _input_specs(info):
            if is_widget(kind, options):
                if position < len(values):
                    inputs[name] = values[position]
                position += 1 + extra_widget_values(name, kind, options)
            if name in linked:
                inputs[name] = linked[name]
        title = node.get("title") or info.get("display_name") or node_type
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}
    return prompt
