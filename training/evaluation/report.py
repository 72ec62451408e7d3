"""Report writing: JSON, a Markdown table, a score-per-subject bar chart and sample grids (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw


def write_json(data: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def save_image(image: Image.Image, path: str | Path) -> Path:
    """PNG written under a temporary name, then renamed: an interrupted run never leaves a truncated image that a
    resumed run would take for a finished one."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    image.save(part, format="PNG")
    os.replace(part, path)
    return path


def claim_output(folder: str | Path, identity: Mapping) -> None:
    """Generation resumes into `folder` (images already there are kept), which is only right if they were made the
    same way: the first run writes `identity` (checkpoint, settings, seed...) to folder/generation.json, and later
    runs must match it."""
    path = Path(folder) / "generation.json"
    identity = json.loads(json.dumps(identity))  # as it reads back from JSON (tuples -> lists)
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (before.get(k), identity.get(k)) for k in before.keys() | identity.keys()
                   if before.get(k) != identity.get(k)}
        if changed:
            details = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in sorted(changed.items()))
            raise ValueError(f"{path}: the images in {Path(folder)} were generated with other settings ({details}); "
                             "use another --out folder, or the same settings to resume")
        return
    write_json(identity, path)


def markdown_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], first: str = "subject",
                   digits: int = 3) -> str:
    """rows: {row name: {column: value}} -> GitHub Markdown table (missing values shown as '-')."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append("-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], path: str | Path,
              title: str = "") -> Path:
    """Grouped bars: one group per row (subject), one bar per column (score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) * max(1, len(columns)) / 1.5), 4.0))
    for j, col in enumerate(columns):
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [float(rows[n].get(col, float("nan"))) for n in names], width=width, label=col)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(rows: Sequence[Sequence[Image.Image]], path: str | Path, cell: int = 128,
               row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None) -> Path:
    """Paste images into a labelled grid PNG (rows of equal or ragged length). Plain PIL: fast and dependency-free."""
    ncols = max((len(r) for r in rows), default=0)
    label_w = 0 if not row_labels else min(220, 8 + 6 * max(len(s) for s in row_labels))
    label_h = 0 if not col_labels else 14
    grid = Image.new("RGB", (label_w + ncols * cell, label_h + len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(col_labels or []):
        draw.text((label_w + c * cell + 2, 1), text[: cell // 6], fill="black")
    for r, images in enumerate(rows):
        if row_labels:
            draw.text((2, label_h + r * cell + cell // 2 - 5), row_labels[r][:36], fill="black")
        for c, img in enumerate(images):
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST if img.width < cell else Image.BICUBIC),
                       (label_w + c * cell, label_h + r * cell))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def chunk(items: Sequence, size: int) -> list[list]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)] if size > 0 else [list(items)]


def grid_shape(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols
