"""KOSMOS-G for ComfyUI: the pack's entry point (ComfyUI imports this file as a package).

Importing it inside ComfyUI registers the `kosmos_g` and `kosmos_g_layout` model folders (merged with
extra_model_paths.yaml entries) and nothing else; ComfyUI then calls `comfy_entrypoint()` for the node list (V3 API). There is deliberately no
NODE_CLASS_MAPPINGS: a module that has one is loaded as a V1 pack and its comfy_entrypoint is ignored.

Outside ComfyUI (pytest imports a rootdir `__init__.py` while collecting the tests, and the trainer runs from this
checkout) `folder_paths` does not exist, and importing this file does nothing.
"""

try:
    import folder_paths
except ImportError:
    folder_paths = None

if folder_paths is not None:
    from .nodes.extension import comfy_entrypoint
    from .nodes.model_folder import register_model_folders

    register_model_folders(folder_paths)
    __all__ = ["comfy_entrypoint"]
