"""Eager against regionally compiled, one 14B 720p forward, for several acceleration sets, in one run.

Each variant is a name and a JSON list of acceleration dicts (as in a recipe), without "compile":

    python -m tests.benchmarks.bench_compile --case 14b-720p --out compile.json \
        --variant 'bf16-sdpa=[]' \
        --variant 'fp8-sage=[{"kind": "quantize", ...}, {"kind": "attention", ...}]'

It reports eager and compiled medians, the ratio, the warm-up (the first compiled forward, compilation
included), and the warm-up of a second process with the same shapes (``--child``), which reuses
PyTorch's compile caches.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.compile import CompileConfig, compile_blocks
from dax_core.recipe import Recipe

from .common import CASES, build_ours, cuda_time, device_name, median, write_json

log = logging.getLogger("bench_compile")


def _model(case_key: str, accelerations: list[dict], seed: int = 0):
    case = CASES[case_key]
    model = build_ours(case.spec, "cuda", torch.bfloat16, seed)
    recipe = Recipe.from_dict({"weights": "random", "accelerations": accelerations})
    apply_accelerations(model, recipe, BuildEnv(torch.device("cuda")))
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    x = torch.randn(case.latent_shape, generator=g, device="cuda")
    t = torch.tensor([700.0], device="cuda")
    ctx = torch.randn(1, 512, case.spec.text_dim, generator=g, device="cuda").to(torch.bfloat16)
    return model, (x, t, ctx)


@torch.inference_mode()
def child(case_key: str, accelerations: list[dict], mode: str, out: Path) -> None:
    """A fresh process: only the compiled warm-up (compilation and the first forward), written to ``out``."""
    model, inputs = _model(case_key, accelerations)
    compile_blocks(model, CompileConfig(mode=mode))
    _, warmup, _ = _timed_after_first(model, inputs, 0)
    write_json(out, {"warmup_s": warmup})


def _timed_after_first(model, inputs, reps: int) -> tuple[torch.Tensor, float, list[float]]:
    """The first forward (its output and its seconds: for a compiled model, the warm-up), then ``reps`` timed."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(*inputs).float()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    return out, first, cuda_time(lambda: model(*inputs), 0, reps)


@torch.inference_mode()
def run_variant(case_key: str, name: str, accelerations: list[dict], mode: str, reps: int, report) -> dict:
    """Eager, then compiled, then a second process's warm-up; ``report(result)`` after each phase, so a run cut
    short keeps what it measured."""
    model, inputs = _model(case_key, accelerations)
    out_eager, _, eager = _timed_after_first(model, inputs, reps)
    result: dict = {"accelerations": accelerations, "mode": mode, "eager_s": median(eager), "eager_times_s": eager}
    report(result)
    compile_blocks(model, CompileConfig(mode=mode))
    out_compiled, warmup, compiled = _timed_after_first(model, inputs, reps)
    result |= {
        "compiled_s": median(compiled),
        "compiled_times_s": compiled,
        "speedup": median(eager) / median(compiled),
        "warmup_s": warmup,
        "compiled_vs_eager_rel_diff": ((out_compiled - out_eager).norm() / out_eager.norm()).item(),
    }
    log.info("%s: eager %.3f s, compiled %.3f s (x%.3f), warm-up %.1f s", name, result["eager_s"],
             result["compiled_s"], result["speedup"], warmup)  # fmt: skip
    report(result)
    del model, out_eager, out_compiled
    gc.collect()
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as folder:
        child_out = Path(folder) / "child.json"
        cmd = [sys.executable, "-m", "tests.benchmarks.bench_compile", "--child", str(child_out), "--case", case_key,
               "--mode", mode, "--variant", f"{name}={json.dumps(accelerations)}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=os.environ.copy())
        if proc.returncode != 0:
            log.error("second process failed: %s", proc.stderr[-2000:])
        result["warmup_second_process_s"] = (
            json.loads(child_out.read_text())["warmup_s"] if proc.returncode == 0 else None
        )
    log.info("%s: second process warm-up %s s", name, result["warmup_second_process_s"])
    report(result)
    return result


def _variants(items: list[str]) -> list[tuple[str, list[dict]]]:
    out = []
    for item in items:
        name, _, spec = item.partition("=")
        out.append((name, json.loads(spec or "[]")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="14b-720p", choices=sorted(CASES))
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--mode", default="default")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = _variants(args.variant)
    if args.child:
        child(args.case, variants[0][1], args.mode, args.child)
        return
    results = {"device": device_name(), "torch": torch.__version__, "case": CASES[args.case].name, "variants": {}}

    def report(name: str, result: dict) -> None:
        results["variants"][name] = result
        if args.out:
            write_json(args.out, results)

    for name, accs in variants:
        run_variant(args.case, name, accs, args.mode, args.reps, lambda r, name=name: report(name, r))


if __name__ == "__main__":
    main()
