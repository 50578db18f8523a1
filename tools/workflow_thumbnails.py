"""Draw the template browser's thumbnail of every shipped workflow: ``python tools/workflow_thumbnails.py``.

ComfyUI's template browser shows a custom node pack's ``workflows/<name>.json`` on a square card (256 x 256 CSS
pixels) whose picture is ``workflows/<name>.jpg``. A whole graph shrunk to that size is unreadable, so the
picture is the graph's DAX chain, read from the workflow's API-format twin (``workflows/api/<name>.json``, whose
inputs carry their names): every node linked by DAX_MODEL from the loader to the sampler, top to bottom, with its
main settings, then the video's size (the card prints the template's name under the picture). Pillow's own font
keeps the picture independent of the machine's fonts.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = 512  # twice the card's CSS size, for high-density screens
QUALITY = 85
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
API_FOLDER = "api"
SAMPLER = "DaxMultiGPUSampler"
LATENT_NODES = ("EmptyHunyuanLatentVideo", "WanImageToVideo", "WanFirstLastFrameToVideo", "Wan22ImageToVideoLatent")
log = logging.getLogger("workflow_thumbnails")

BACKGROUND = (32, 33, 36)
GRID = (40, 41, 45)
BOX = (53, 55, 60)
ACCENT = (94, 172, 255)  # DAX_MODEL links, as drawn in the editor by this pack's type colour
TITLE = (236, 238, 242)
DETAIL = (176, 184, 198)
MUTED = (140, 146, 158)
TITLE_FONT, DETAIL_FONT, FOOTER_FONT = 24, 18, 22
MARGIN = 22
GAP = 12  # between two boxes of the chain, where the link's arrow is

# the settings shown under a node's title, by class; other nodes show their first two settings
SHOWN = {
    "DaxLoadWan": ("model_name",),
    "DaxQuantizeLinear": ("dtype", "granularity"),
    "DaxSetAttentionBackend": ("backend",),
    "DaxTeacache": ("threshold", "mode"),
    "DaxMagcache": ("threshold", "max_consecutive_skips"),
    "DaxCompile": ("backend", "mode"),
    SAMPLER: ("steps", "cfg", "sampler_name", "gpus"),
}


def api_twin(workflow: Path) -> Path:
    """The API-format twin of a UI-format workflow: the same name in ``workflows/api``."""
    return workflow.parent / API_FOLDER / workflow.name


def dax_chain(prompt: dict[str, Any]) -> list[str]:
    """Node ids from the model loader to the (first) sampler, following the ``dax_model`` inputs upstream."""
    samplers = sorted((k for k, n in prompt.items() if n["class_type"] == SAMPLER), key=int)
    if not samplers:
        raise ValueError(f"the workflow has no {SAMPLER} node")
    chain = [samplers[0]]
    while isinstance(link := prompt[chain[-1]]["inputs"].get("dax_model"), list):
        if link[0] in chain:
            raise ValueError(f"the dax_model inputs loop through node {link[0]}")
        chain.append(link[0])
    return chain[::-1]


def _value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{name} {'on' if value else 'off'}"
    if isinstance(value, int | float):
        return f"{name} {value:g}"
    return str(value)


def details(node: dict[str, Any]) -> str:
    """The node's main settings in one line, e.g. ``fp8, per-token-per-channel``."""
    inputs = node["inputs"]
    names = SHOWN.get(node["class_type"])
    if names is None:
        names = [k for k, v in inputs.items() if not isinstance(v, list)][:2]
    return ", ".join(_value(n, inputs[n]) for n in names if n in inputs and not isinstance(inputs[n], list))


def _video_size(prompt: dict[str, Any]) -> str | None:
    for node in prompt.values():
        if node["class_type"] in LATENT_NODES:  # each has the video's width, height and length
            i = node["inputs"]
            return f"{i['width']} x {i['height']}, {i['length']} frames"
    return None


def _fit(text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """``text``, cut with an ellipsis where it is wider than ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def box_rects(count: int, top: float, bottom: float) -> list[tuple[float, float, float, float]]:
    """Where the chain's ``count`` boxes go between ``top`` and ``bottom``."""
    height = min(84.0, (bottom - top - GAP * (count - 1)) / count)
    start = top + ((bottom - top) - (count * height + GAP * (count - 1))) / 2
    return [
        (MARGIN, start + i * (height + GAP), SIZE - MARGIN, start + i * (height + GAP) + height) for i in range(count)
    ]


def render(prompt: dict[str, Any]) -> Image.Image:
    """The thumbnail of the API-format ``prompt``."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i in range(0, SIZE, 32):
        draw.line((i, 0, i, SIZE), fill=GRID)
        draw.line((0, i, SIZE, i), fill=GRID)
    title_font = ImageFont.load_default(size=TITLE_FONT)
    detail_font = ImageFont.load_default(size=DETAIL_FONT)
    chain = dax_chain(prompt)
    rects = box_rects(len(chain), MARGIN, SIZE - MARGIN - FOOTER_FONT - 16)
    for index, (node_id, rect) in enumerate(zip(chain, rects, strict=True)):
        node = prompt[node_id]
        draw.rounded_rectangle(rect, radius=8, fill=BOX, outline=ACCENT, width=2)
        x0, y0, x1, y1 = rect
        title = node.get("_meta", {}).get("title") or node["class_type"]
        draw.text((x0 + 14, y0 + 8), _fit(title, title_font, x1 - x0 - 28), font=title_font, fill=TITLE)
        detail = details(node)
        if detail and y1 - y0 >= TITLE_FONT + DETAIL_FONT + 16:
            draw.text((x0 + 14, y1 - DETAIL_FONT - 10), _fit(detail, detail_font, x1 - x0 - 28), font=detail_font,
                      fill=DETAIL)  # fmt: skip
        if index:  # the DAX_MODEL link from the box above
            mid, above = (x0 + x1) / 2, rects[index - 1][3]
            draw.line((mid, above, mid, y0 - 4), fill=ACCENT, width=3)
            draw.polygon(((mid - 6, y0 - 8), (mid + 6, y0 - 8), (mid, y0 - 1)), fill=ACCENT)
    size = _video_size(prompt)
    if size:
        footer = ImageFont.load_default(size=FOOTER_FONT)
        draw.text((MARGIN, SIZE - MARGIN - FOOTER_FONT), size, font=footer, fill=MUTED)
    return image


def thumbnail_path(workflow: Path) -> Path:
    return workflow.with_suffix(".jpg")


def templates(folder: Path = WORKFLOWS) -> list[Path]:
    """The workflows the template browser lists: the JSON files at the folder's top level (UI format)."""
    return sorted(folder.glob("*.json"))


def write_thumbnails(workflows: Iterable[Path]) -> list[Path]:
    written = []
    for path in workflows:
        prompt = json.loads(api_twin(path).read_text(encoding="utf-8"))
        out = thumbnail_path(path)
        render(prompt).save(out, quality=QUALITY, optimize=True)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="UI-format workflows (default: workflows/*.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for out in write_thumbnails(args.workflows or templates()):
        log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
