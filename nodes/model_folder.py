"""The pack's model folders (`models/kosmos_g/`, `models/kosmos_g_layout/`): registration with ComfyUI's `folder_paths`, and where-to-look text for errors.

Registration follows `folder_paths.add_model_folder_path` semantics on purpose: ComfyUI reads
`extra_model_paths.yaml` before it imports custom nodes, so a `kosmos_g:` key there has already created the entry
(with an empty extension set, meaning "any file"). Appending our default folder to that entry, instead of replacing
it, keeps both the user's folders and `models/kosmos_g/` (the bug other packs had: a yaml entry knocked out the
default folder). The module takes `folder_paths` as an argument so it can be tested without ComfyUI.
"""

from __future__ import annotations

import os
from types import ModuleType

FOLDER_NAME = "kosmos_g"
# The pack's checkpoints are single safetensors files; `.sft` is the short spelling ComfyUI also accepts.
EXTENSIONS = frozenset({".safetensors", ".sft"})
# Trained text-to-layout models (the layout stage's export), read by the Load Layout Model node.
LAYOUT_FOLDER = "kosmos_g_layout"
LAYOUT_EXTENSIONS = frozenset({".safetensors"})
# What the official KOSMOS-G files are (fairseq torch.save pickles): never listed, but named in errors, since a user
# who dropped checkpoint_final.pt here otherwise sees an empty dropdown and no reason.
UNCONVERTED_EXTENSIONS = (".pt", ".pth")


def default_folder(folder_paths: ModuleType, name: str = FOLDER_NAME) -> str:
    """`<ComfyUI>/models/<name>` (honours `--base-directory` / `--models-directory`)."""
    return os.path.join(folder_paths.models_dir, name)


def register_model_folder(folder_paths: ModuleType, name: str = FOLDER_NAME,
                          extensions: frozenset[str] = EXTENSIONS) -> None:
    """Add `models/<name>` to the `<name>` folder type, keeping paths that extra_model_paths.yaml put there.

    Folders from the yaml come first (the user chose them), the default folder last; the extension set becomes
    `extensions` plus whatever a previous registration allowed.
    """
    folder_paths.add_model_folder_path(name, default_folder(folder_paths, name))
    paths, allowed = folder_paths.folder_names_and_paths[name]
    # An entry created by the yaml has an empty set (= every file); narrow it to model files so the dropdown does not
    # list README.txt and friends. A non-empty set from elsewhere is widened, never narrowed.
    folder_paths.folder_names_and_paths[name] = (paths, set(allowed) | set(extensions))


def register_model_folders(folder_paths: ModuleType) -> None:
    """Every folder of the pack: KOSMOS-G checkpoints and layout models."""
    register_model_folder(folder_paths)
    register_model_folder(folder_paths, LAYOUT_FOLDER, LAYOUT_EXTENSIONS)


def searched_folders_text(folders: list[str]) -> str:
    """A one-line list of the folders searched, for error messages."""
    if not folders:
        return "no folder is registered for 'kosmos_g'"
    return ", ".join(folders)


def unconverted_files(folders: list[str]) -> list[str]:
    """Absolute paths of the `.pt`/`.pth` files in the folders (and their subfolders, as ComfyUI lists them)."""
    found = []
    for folder in folders:
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(UNCONVERTED_EXTENSIONS)]
    return found
