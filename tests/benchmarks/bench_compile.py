"""Eager against regionally compiled, one 14B 720p forward, for several acceleration sets, in one run.

Each variant is a name and a JSON list of acceleration dicts (as in a recipe), without "compile":

    python -m tests.benchmarks.bench_compile --case 14b-720p --out compile.json \
        --variant 'bf16-sdpa=[]' \
        --variant 'fp8-sage=[{"kind": "quantize", ...}, {"kind": "attention", ...}]'

It reports eager and compiled medians, the ratio, the warm-up (the first compiled forward, compilation
included), and the warm-up of a second process with the same shapes (``--child``), which reuses
PyTorch's compile caches. Results are written after each phase, so a run cut short keeps what it measured.
Smoke test on the CPU: ``--case tiny --device cpu --backend aot_eager``.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.compile import CompileConfig, compile_blocks
from dax_core.recipe import Recipe

from .common import CASES, build_ours, device_name, median, timed, write_json

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger("bench_compile")


def _model(case_key: str, accelerations: list[dict], device: torch.device, seed: int = 0):
    case = CASES[case_key]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_ours(case.spec, str(device), dtype, seed)
    recipe = Recipe.from_dict({"weights": "random", "accelerations": accelerations})
    apply_accelerations(model, recipe, BuildEnv(device))
    g = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.randn(case.latent_shape, generator=g, device=device)
    t = torch.tensor([700.0], device=device)
    ctx = torch.randn(1, 512, case.spec.text_dim, generator=g, device=device).to(dtype)
    return model, (x, t, ctx)


@dataclass(frozen=True)
class Settings:
    case: str
    device: torch.device
    mode: str
    backend: str
    reps: int

    def compile_config(self) -> CompileConfig:
        return CompileConfig(mode=self.mode, backend=self.backend)

    def argv(self) -> list[str]:
        return ["--case", self.case, "--device", str(self.device), "--mode", self.mode, "--backend", self.backend]


def _timed_after_first(model, inputs, device: torch.device, reps: int) -> tuple[torch.Tensor, float, list[float]]:
    """The first forward (its output and its seconds: for a compiled model, the warm-up), then ``reps`` timed."""
    outputs = []
    (first,) = timed(lambda: outputs.append(model(*inputs).float()), 1, device)
    return outputs[0], first, timed(lambda: model(*inputs), reps, device)


@torch.inference_mode()
def child(settings: Settings, accelerations: list[dict], out: Path) -> None:
    """A fresh process: only the compiled warm-up (compilation and the first forward), written to ``out``."""
    model, inputs = _model(settings.case, accelerations, settings.device)
    compile_blocks(model, settings.compile_config())
    _, warmup, _ = _timed_after_first(model, inputs, settings.device, 0)
    write_json(out, {"warmup_s": warmup})


def _second_process_warmup(settings: Settings, name: str, accelerations: list[dict]) -> float | None:
    with tempfile.TemporaryDirectory() as folder:
        child_out = Path(folder) / "child.json"
        cmd = [sys.executable, "-m", "tests.benchmarks.bench_compile", "--child", str(child_out), *settings.argv(),
               "--variant", f"{name}={json.dumps(accelerations)}"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=os.environ.copy())
        if proc.returncode != 0:
            log.error("second process failed: %s", proc.stderr[-2000:])
            return None
        return json.loads(child_out.read_text())["warmup_s"]


@torch.inference_mode()
def run_variant(settings: Settings, name: str, accelerations: list[dict], report: Callable[[dict], None]) -> dict:
    """Eager, then compiled, then a second process's warm-up; ``report(result)`` after each phase, so a run cut
    short keeps what it measured."""
    model, inputs = _model(settings.case, accelerations, settings.device)
    out_eager, _, eager = _timed_after_first(model, inputs, settings.device, settings.reps)
    result: dict = {
        "accelerations": accelerations,
        "mode": settings.mode,
        "backend": settings.backend,
        "eager_s": median(eager),
        "eager_times_s": eager,
    }
    report(result)
    compile_blocks(model, settings.compile_config())
    out_compiled, warmup, compiled = _timed_after_first(model, inputs, settings.device, settings.reps)
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
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()
    result["warmup_second_process_s"] = _second_process_warmup(settings, name, accelerations)
    log.info("%s: second process warm-up %s s", name, result["warmup_second_process_s"])
    report(result)
    return result


def _variants(items: list[str]) -> list[tuple[str, list[dict]]]:
    out = []
    for item in items:
        name, _, spec = item.partition("=")
        out.append((name, json.loads(spec or "[]")))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="14b-720p", choices=sorted(CASES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--mode", default="default")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("need --reps >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(args.case, torch.device(args.device), args.mode, args.backend, args.reps)
    if settings.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark times GPU forwards (smoke-test: --case tiny --device cpu)")
    variants = _variants(args.variant)
    if args.child:
        child(settings, variants[0][1], args.child)
        return {}
    results = {
        "device": device_name() if settings.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "case": CASES[args.case].name,
        "variants": {},
    }

    def report(name: str, result: dict) -> None:
        results["variants"][name] = result
        if args.out:
            write_json(args.out, results)

    for name, accs in variants:
        run_variant(settings, name, accs, lambda r, name=name: report(name, r))
    return results


if __name__ == "__main__":
    main()
