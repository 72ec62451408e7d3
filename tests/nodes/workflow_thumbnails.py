"""Thumbnails of the shipped workflows: workflows/<name>.jpg beside each workflows/<name>.json.

ComfyUI v0.33 lists a pack's templates by file name (GET /workflow_templates -> {"kosmos_g": [<name>, ...]}); its
frontend (comfyui-frontend-package 1.49) shows `<name>` as the template's title and asks for the thumbnail at
/api/workflow_templates/<pack folder>/<name>.jpg, which the server serves from the same folder. So the file name is
the title, and each workflow needs a JPEG of the same name.

The thumbnail is a schematic of the graph itself, drawn from the UI file: every node at its position and size, its
links coloured by type as in the editor, the title on top. Regenerate after changing a workflow:

    python tests/nodes/workflow_thumbnails.py          # (make_workflows.py does it too)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SIZE = (512, 384)  # (width, height) of every thumbnail
HEADER = 56  # pixels above the graph for the title
TITLE_BAR = 30  # LiteGraph draws a node's title bar above its `pos`
BACKGROUND = (32, 33, 36)
LINK_COLOURS = {  # the editor's default link colours, so the thumbnail reads like the graph it shows
    "MODEL": (179, 157, 219), "CLIP": (255, 213, 0), "VAE": (255, 110, 110), "CONDITIONING": (255, 169, 49),
    "LATENT": (255, 156, 249), "IMAGE": (100, 181, 246), "MASK": (129, 199, 132), "CONTROL_NET": (0, 214, 141),
}
KOSMOS_COLOUR, NOTE_COLOUR, NODE_COLOUR = (96, 72, 150), (70, 70, 70), (53, 60, 72)


def _label(node: dict) -> str:
    """'KosmosGInterleavedPrompt' -> 'KOSMOS-G Interleaved Prompt'; a node's own title wins."""
    if node.get("title"):
        return node["title"]
    name = node["type"].replace("KosmosG", "KOSMOS-G ")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).strip()


def render(workflow: dict, title: str) -> Image.Image:
    """The (512, 384) RGB schematic of a UI-format workflow."""
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values())
    top = min(n["pos"][1] - TITLE_BAR for n in nodes.values())
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    margin = 12
    scale = min((SIZE[0] - 2 * margin) / (right - left), (SIZE[1] - HEADER - margin) / (bottom - top))
    off_x = margin + ((SIZE[0] - 2 * margin) - (right - left) * scale) / 2
    off_y = HEADER + ((SIZE[1] - HEADER - margin) - (bottom - top) * scale) / 2

    def xy(x: float, y: float) -> tuple[float, float]:
        return off_x + (x - left) * scale, off_y + (y - top) * scale

    for _link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        start = xy(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * src_slot)
        end = xy(b["pos"][0], b["pos"][1] + 14 + 20 * dst_slot)
        draw.line([start, end], fill=LINK_COLOURS.get(kind, (160, 160, 160)), width=2)

    font = ImageFont.load_default(size=max(8, round(13 * min(1.0, scale * 2))))
    for node in nodes.values():
        x0, y0 = xy(node["pos"][0], node["pos"][1] - TITLE_BAR)
        x1, y1 = xy(node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
        colour = (KOSMOS_COLOUR if node["type"].startswith("KosmosG")
                  else NOTE_COLOUR if node["type"] in ("MarkdownNote", "Note") else NODE_COLOUR)
        draw.rounded_rectangle([x0, y0, x1, y1], radius=4, fill=colour, outline=(20, 20, 20))
        bar = y0 + TITLE_BAR * scale
        draw.rounded_rectangle([x0, y0, x1, bar], radius=4, fill=tuple(min(255, c + 30) for c in colour))
        label = _label(node)
        while label and draw.textlength(label, font=font) > x1 - x0 - 6:
            label = label[:-1]
        draw.text((x0 + 3, y0 + 1), label, fill=(235, 235, 235), font=font)

    title_font = ImageFont.load_default(size=22)
    draw.text((margin, 16), title, fill=(250, 250, 250), font=title_font)
    return image


def write_all(folder: Path = WORKFLOWS) -> list[Path]:
    """workflows/<name>.jpg for every workflows/<name>.json (UI format); returns the written paths."""
    written = []
    for path in sorted(folder.glob("*.json")):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        out = path.with_suffix(".jpg")
        render(workflow, path.stem).save(out, quality=88)
        written.append(out)
    return written


if __name__ == "__main__":
    for written in write_all():
        print(written)
