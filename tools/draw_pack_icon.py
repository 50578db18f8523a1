"""Draw the pack's registry icon (``[tool.comfy] Icon`` in pyproject.toml): ``python tools/draw_pack_icon.py``.

A 400x400 PNG: the letters DAX over three frames of a film strip, drawn with Pillow's own font so that the picture
does not depend on the fonts of the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 400
ICON = Path(__file__).resolve().parents[1] / "docs" / "images" / "icon.png"
BACKGROUND = (24, 26, 33)
ACCENT = (94, 172, 255)
FRAME_COLORS = ((61, 90, 128), (72, 120, 170), (94, 172, 255))


def draw_icon() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((12, 12, SIZE - 12, SIZE - 12), radius=56, outline=ACCENT, width=8)
    # a film strip of three frames, each one brighter: video, accelerated
    top, bottom = 232, 332
    draw.rectangle((48, top, SIZE - 48, bottom), fill=(40, 44, 56))
    for x in range(60, SIZE - 60, 28):
        draw.rectangle((x, top + 8, x + 12, top + 18), fill=BACKGROUND)
        draw.rectangle((x, bottom - 18, x + 12, bottom - 8), fill=BACKGROUND)
    gap = 12
    width = (SIZE - 96 - 4 * gap) // 3  # three frames, a gap at each end and between them
    for i, color in enumerate(FRAME_COLORS):
        x = 48 + gap + i * (width + gap)
        draw.rectangle((x, top + 26, x + width, bottom - 26), fill=color)
    font = ImageFont.load_default(size=150)
    draw.text((SIZE / 2, 140), "DAX", font=font, fill=(240, 244, 250), anchor="mm", stroke_width=3,
              stroke_fill=(240, 244, 250))  # fmt: skip
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ICON, help="where to write it (default: docs/images/icon.png)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(args.out, optimize=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
