"""Command line: ``python -m dax_core <command> ...``.

Commands:
  tiny-model   write a small random Wan2.1 DiT (ComfyUI and/or diffusers naming)
  tiny-lora    write a random LoRA for a Wan2.1 DiT (lightx2v, ComfyUI, diffusers, kohya or bare key names)
  demo         run a shipped workflow end to end through a headless ComfyUI on 127.0.0.1
  generate     sample a latent from text embeddings, in one process or under torchrun (sequence parallel)
  bench        the speed ladder: every acceleration timed against the same run's stock forward (JSON + Markdown)
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {
        "tiny-model": "dax_core.models.tiny",
        "tiny-lora": "dax_core.lora.tiny",
        "demo": "dax_core.demo.run",
        "generate": "dax_core.runtime.generate",
        "bench": "dax_core.bench.cli",
    }
    if not argv or argv[0] not in commands:
        sys.stderr.write(__doc__ or "")
        return 2
    import importlib

    module = importlib.import_module(commands[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
