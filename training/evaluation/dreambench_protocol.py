"""DreamBench as KOSMOS-G evaluates it (official `kosmos-g/sample_kosmosg_dreambench.py`, `kosmos-g/eval/dino_score.py`).

* 30 subjects, classes and the two 25-prompt lists are parsed from the dataset's `prompts_and_classes.txt`.
* One reference image per subject: `images/<subject>.jpg` (the project's shared copy) or, for a full DreamBench
  checkout, `<subject>/<NN>.jpg` from KOSMOS-G's single-image list when present, else the first image by name.
* Input prompt: the subject phrase "a {0} {1}" is replaced by the image ("<i> in the jungle"); attribute prompts
  ("a red {0} {1}") become "<i>, red" (official `drop_object=True`).
* Scored prompt (CLIP-T): the same template with the class word and no unique token ("a dog in the jungle").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "<i>"
LIVE_CLASSES = frozenset({"cat", "dog"})
# KOSMOS-G's scripts/remove_dreambench_multiimg.sh keeps one image per subject; the ones the reference names.
OFFICIAL_REFERENCE = {"backpack": "02.jpg", "dog": "02.jpg", "cat": "04.jpg", "vase": "02.jpg"}
_TEMPLATE = re.compile(r"'(a [^']*\{0\} \{1\}[^']*)'\.format")


@dataclass(frozen=True)
class DreamBenchPrompt:
    index: int
    template: str  # "a {0} {1} in the jungle"
    kosmos: str  # "<i> in the jungle"
    scored: str  # "a dog in the jungle"


@dataclass(frozen=True)
class DreamBenchSubject:
    name: str
    class_name: str
    reference: Path
    live: bool
    prompts: tuple[DreamBenchPrompt, ...]


def kosmos_prompt(template: str) -> str:
    """'a {0} {1} in the jungle' -> '<i> in the jungle'; 'a red {0} {1}' -> '<i>, red'."""
    head, _, tail = template.partition("{0} {1}")
    attribute = head.strip()
    attribute = attribute[2:] if attribute.startswith("a ") else ("" if attribute == "a" else attribute)
    text = PLACEHOLDER + tail.rstrip()
    return f"{text}, {attribute}" if attribute else text


def scored_prompt(template: str, class_name: str) -> str:
    return template.replace("{0} {1}", class_name)


def parse_prompts_and_classes(path: str | Path) -> tuple[dict[str, str], list[str], list[str]]:
    """Returns ({subject: class}, object templates, live-subject templates)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DreamBench prompts_and_classes.txt not found at {path}")
    text = path.read_text(encoding="utf-8")
    classes: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(",", 1)
        if len(parts) == 2 and parts[0] and parts[0] != "subject_name" and "{" not in line and "'" not in line:
            classes[parts[0].strip()] = parts[1].strip()
    obj_part, _, live_part = text.partition("Live Subject Prompts")
    objects = _TEMPLATE.findall(obj_part)
    live = _TEMPLATE.findall(live_part)
    if not classes or len(objects) != 25 or len(live) != 25:
        raise ValueError(
            f"{path}: expected the subject,class table and two lists of 25 prompts; "
            f"found {len(classes)} subjects, {len(objects)} object and {len(live)} live prompts"
        )
    return classes, objects, live


def find_reference(root: Path, subject: str) -> Path:
    flat = root / "images" / f"{subject}.jpg"
    if flat.is_file():
        return flat
    for folder in (root / subject, root / "dataset" / subject):
        if folder.is_dir():
            official = folder / OFFICIAL_REFERENCE.get(subject, "")
            if subject in OFFICIAL_REFERENCE and official.is_file():
                return official
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if images:
                return images[0]
    raise FileNotFoundError(
        f"no reference image for DreamBench subject {subject!r} under {root} "
        f"(expected images/{subject}.jpg or {subject}/NN.jpg)"
    )


def load_dreambench(root: str | Path, subjects: list[str] | None = None) -> list[DreamBenchSubject]:
    """Read the DreamBench folder `root` (holding prompts_and_classes.txt) into subjects with their 25 prompts."""
    root = Path(root)
    classes, object_templates, live_templates = parse_prompts_and_classes(root / "prompts_and_classes.txt")
    names = subjects if subjects else list(classes)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"unknown DreamBench subjects {unknown}; known: {sorted(classes)}")
    out = []
    for name in names:
        cls = classes[name]
        live = cls in LIVE_CLASSES
        templates = live_templates if live else object_templates
        prompts = tuple(
            DreamBenchPrompt(i, t, kosmos_prompt(t), scored_prompt(t, cls)) for i, t in enumerate(templates)
        )
        out.append(DreamBenchSubject(name, cls, find_reference(root, name), live, prompts))
    return out
