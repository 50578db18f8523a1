"""The full stack's first forward in a fresh process with empty compile caches: what a new machine pays once.

    python -m tests.gpu.cold_start --model 14b --out cold_14b.json

Triton's and inductor's caches point at new empty folders before torch is imported, so every kernel (DAX's Triton
kernels, inductor's block graph) compiles in this call. The model is built with seeded random weights at the real
shapes and the product's full stack (SageAttention2, FP8 linears, compile: each with its defaults); the first call
is timed, then a second one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

CACHES = ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")
FULL_STACK = [{"kind": "attention", "backend": "sage"}, {"kind": "quantize", "dtype": "fp8"}, {"kind": "compile"}]
MODELS = {"14b": "14b-720p", "1.3b": "1.3b-480p"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="14b")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = tempfile.mkdtemp(prefix="dax-cold-")
    for name in CACHES:  # before torch and triton read them
        os.environ[name] = os.path.join(root, name.lower())

    import torch

    from dax_core.accelerations import BuildEnv, apply_accelerations
    from dax_core.bench.inputs import make_inputs
    from dax_core.bench.weights import build_model
    from dax_core.recipe import Recipe
    from tests.benchmarks.common import CASES

    case, device = CASES[MODELS[args.model]], torch.device("cuda")
    with torch.inference_mode():
        model = build_model(case.spec, device, torch.bfloat16, 0)
        apply_accelerations(
            model, Recipe.from_dict({"weights": "random", "accelerations": FULL_STACK}), BuildEnv(device)
        )
        inputs = make_inputs(case, device, torch.bfloat16, 0)
        seconds = []
        for _ in range(2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            inputs(model)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    result = {"case": case.name, "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "accelerations": FULL_STACK, "first_call_s": seconds[0], "second_call_s": seconds[1],
              "caches": "empty (new folders for " + ", ".join(CACHES) + ")"}  # fmt: skip
    logging.getLogger("cold_start").info("%s: first call %.2f s, second %.2f s", case.name, *seconds)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
