"""ComfyUI nodes of the KOSMOS-G pack: a thin adapter between ComfyUI's graph types and `kosmos_g_core`.

Two kinds of module live here, and the split is deliberate:

* plain modules that never import ComfyUI (`model_folder`, `prompt_inputs`, `layout_inputs`, `conditioning_ops`,
  `load_errors`): the validation, prompt-building, layout, batch and conditioning rules the nodes apply, testable without a ComfyUI
  checkout;
* node modules that import `comfy_api` / `comfy` (`comfy_types`, `kosmos_g_model`, `*_nodes`, `extension`):
  imported only when ComfyUI loads the pack through the root `__init__.py`.

This `__init__` imports nothing, so `import <pack>.nodes.prompt_inputs` works outside ComfyUI.
"""
