"""Take the README's screenshot of a finished run: ``python tools/readme_screenshot.py``.

It is the last picture of the browser test (tests/comfyui/test_front_end.py): the shipped 1.3B template opened from
the template browser, run from the canvas on the tiny random models, with the sampler's summary, its last latent
preview and the saved video. The test writes the picture where ``$DAX_SCREENSHOT`` says.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "docs" / "images" / "finished_run.jpg"
TEST = "tests/comfyui/test_front_end.py::test_a_run_from_the_canvas_shows_live_status_then_the_summary_and_a_preview"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PICTURE, help="where to write it (default: docs/images/)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DAX_SCREENSHOT=str(args.out.resolve()))
    return subprocess.call([sys.executable, "-m", "pytest", "-q", TEST], cwd=REPO, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
