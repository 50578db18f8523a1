"""TeaCache cost model at Wan2.1-T2V-14B 1280x720x81 with CFG batched (B = 2): what a computed and a skipped
step cost, and the projected wall time of a 50-step run against the number of skipped steps.

    python -m tests.benchmarks.bench_teacache --out teacache.json            # H100: about 2 minutes

Measured, each a whole ``model(x, t, context, branches)`` call, synchronised, seeded random weights in bf16:

- computed step: the block stack runs (TeaCache's decision and residual store included), median of
  ``--compute-reps`` (3: each is ~23 s at this size, and the first one sets up the kernels for the shape);
- skipped step: prepare + the cache decision (one GPU->CPU sync) + residual reuse + head, median of ``--reps``;
- the same two with the residuals in pinned CPU memory (``cache_device = "cpu"``): the block stack is replaced
  by a stand-in there (it does not change what the cache adds), so no further 23 s forwards are needed.

Then ``T(k) = (50 - k) * computed + k * skipped``. This benchmark does not measure how many steps TeaCache
skips: that depends on the real Wan weights and the threshold, and skip rates on random weights say nothing
about them. It measures what a skipped step costs (target: at most 2 % of a computed one). MagCache's
decisions, by contrast, follow its calibrated per-step ratios alone, so its published settings' schedules
(computed on the CPU with a tiny model) are those of the real 14B weights, and their projected times are listed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from dax_core.bench.step_costs import magcache_pattern
from dax_core.cache.coefficients import published_coefficients
from dax_core.cache.teacache import TeaCache
from dax_core.models.wan import WanModel

from .common import CASES, Case, build_ours, device_name, timed, write_json

log = logging.getLogger("bench_teacache")

STEPS = 50
SKIP_TARGET = 0.02
NEVER = 1e9  # a threshold the accumulated change never reaches: every step the window allows is skipped
# MagCache4Wan2.1's published T2V-14B settings: (threshold, K, retention ratio)
MAGCACHE_SETTINGS = {"E012K2R02": (0.12, 2, 0.2), "E024K6R02": (0.24, 6, 0.2)}


class _Run:
    """A TeaCache run driven step by step, as the engine drives it."""

    def __init__(self, model: WanModel, cache: TeaCache, x, t, ctx) -> None:
        self.model, self.cache, self.args = model, cache, (x, t, ctx)
        self.branches = ("cond",) * (x.shape[0] // 2) + ("uncond",) * (x.shape[0] // 2)
        model.step_cache = cache
        cache.start_run(STEPS)
        self.step = 0

    def __call__(self) -> torch.Tensor:
        self.cache.start_step(self.step)
        self.step += 1
        return self.model(*self.args, branches=self.branches)

    def end(self) -> str:
        report = self.cache.end_run()
        self.model.step_cache = None
        return report.branch("cond").pattern


def _stand_in_costs(
    model: WanModel, case: Case, x, t, ctx, where: str, reps: int, device: torch.device, shell_s: float
) -> dict:
    """With the block stack replaced by a stand-in: what storing (computed step) and reusing (skipped step) a
    residual kept on ``where`` ("model": the GPU, "cpu": pinned host memory) costs."""
    cache_device = torch.device("cpu") if where == "cpu" else None
    run_stub = _Run(model, _cache(case.spec.name, 0.0, 1, cache_device), x, t, ctx)
    stub_computed = timed(run_stub, reps, device)  # threshold 0: every step computes and stores
    run_stub.end()
    run_stub = _Run(model, _cache(case.spec.name, NEVER, 1, cache_device), x, t, ctx)
    run_stub()  # step 0 stores a residual
    stub_skipped = timed(run_stub, reps, device)
    run_stub.end()
    return {"store_s": statistics.median(stub_computed) - shell_s, "stub_skipped_s": statistics.median(stub_skipped)}


def _cache(spec_name: str, threshold: float, skip_from: int, cache_device: str | None) -> TeaCache:
    """A TeaCache ("e" mode: step 0 always computes) that computes the steps before ``skip_from``."""
    coefficients = published_coefficients("wan2.1-t2v-14b", "e") if "14b" in spec_name else (1.0, 0.0)
    return TeaCache(coefficients, threshold, mode="e", start=skip_from / STEPS, cache_device=cache_device)


@torch.inference_mode()
def run(case: Case, device: torch.device, compute_reps: int, reps: int, seed: int = 0) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    build_start = time.perf_counter()
    model = build_ours(case.spec, str(device), dtype, seed)
    log.info("built %s in %.1f s", case.spec.name, time.perf_counter() - build_start)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    _, c, f, h, w = case.latent_shape
    x = torch.randn(2, c, f, h, w, generator=g, device=device)  # CFG batched: the same latent twice
    x[1] = x[0]
    t = torch.full((2,), 700.0, device=device)
    ctx = torch.randn(2, 512, case.spec.text_dim, generator=g, device=device).to(dtype)

    # warm-up on one latent frame: kernels loaded and compiled without paying a full-size forward
    small = x[:, :, :1]
    model(small, t, ctx)
    warm = _Run(model, _cache(case.spec.name, NEVER, 1, None), small, t, ctx)
    for _ in range(3):
        warm()
    warm.end()

    result: dict = {"case": case.name, "tokens": case.tokens, "batch": 2, "steps": STEPS}
    # real block stack: steps 0 .. compute_reps-1 computed, the following ones skipped
    run_real = _Run(model, _cache(case.spec.name, NEVER, compute_reps, None), x, t, ctx)
    computed = timed(run_real, compute_reps, device)
    skipped = timed(run_real, reps, device)
    pattern = run_real.end()
    assert pattern == "C" * compute_reps + "S" * reps, pattern

    # the block stack replaced by a stand-in: the cache's own cost with residuals in pinned CPU memory
    stand_in = torch.empty(2, case.tokens, case.spec.dim, device=device, dtype=dtype)
    model.run_blocks = lambda p: stand_in  # instance attribute: this benchmark's model only
    shell = timed(lambda: model(x, t, ctx), reps, device)  # prepare + stand-in + head, no cache
    costs = {}
    for where in ("model", "cpu"):
        try:
            costs[where] = _stand_in_costs(model, case, x, t, ctx, where, reps, device, statistics.median(shell))
        except RuntimeError as err:  # e.g. no pinned host memory in this container: keep the GPU-side results
            log.warning("residuals in %s memory: %s", where, err)
            costs[where] = {"error": str(err)}
    del model.run_blocks

    computed_s = statistics.median(computed)
    skipped_s = statistics.median(skipped)
    result["model_cache"] = {
        "computed_s": computed_s,
        "computed_times_s": computed,
        "skipped_s": skipped_s,
        "skipped_times_s": skipped,
        "skip_over_computed": skipped_s / computed_s,
    }
    # residuals on the CPU: a computed step also downloads its residual, a skipped one uploads it
    if "error" in costs["cpu"] or "error" in costs["model"]:
        result["cpu_cache"] = {"error": costs["cpu"].get("error") or costs["model"].get("error")}
    else:
        download = costs["cpu"]["store_s"] - costs["model"]["store_s"]
        upload = costs["cpu"]["stub_skipped_s"] - costs["model"]["stub_skipped_s"]
        result["cpu_cache"] = {
            "computed_s": computed_s + download,
            "skipped_s": skipped_s + upload,
            "skip_over_computed": (skipped_s + upload) / (computed_s + download),
            "download_s": download,
            "upload_s": upload,
        }
    result["shell_s"] = statistics.median(shell)
    result["stand_in_costs"] = costs
    result["residual_gib_per_branch"] = case.tokens * case.spec.dim * stand_in.element_size() / 2**30
    measured = [k for k in ("model_cache", "cpu_cache") if "error" not in result[k]]
    result["projection"] = {k.removesuffix("_cache"): _projection(result[k]) for k in measured}
    result["skip_within_target"] = all(result[k]["skip_over_computed"] <= SKIP_TARGET for k in measured)
    result["magcache_14b"] = magcache_schedules()
    for setting in result["magcache_14b"].values():
        k = setting["skipped"]
        setting["projected_wall_s"] = (STEPS - k) * computed_s + k * skipped_s
        setting["speedup"] = STEPS * computed_s / setting["projected_wall_s"]
    result["note"] = (
        "Costs only: how many steps TeaCache skips depends on the real Wan weights and the threshold; "
        "skip rates on random weights say nothing about real Wan weights."
    )
    return result


def magcache_schedules() -> dict[str, dict]:
    """MagCache's 50-step schedules for Wan2.1-T2V-14B at its published settings (exactly those of the real
    weights: its decisions follow the step index alone)."""
    out = {}
    for name, (threshold, k, retention) in MAGCACHE_SETTINGS.items():
        pattern = magcache_pattern("wan2.1-t2v-14b", threshold, k, retention, STEPS)
        out[name] = {"pattern": pattern, "skipped": pattern.count("S")}
    return out


def _projection(costs: dict) -> list[dict]:
    """Projected wall time of a STEPS-step run with k skipped steps (44: all but e0's 5 retention and the last)."""
    rows = []
    for k in (0, 5, 10, 15, 20, 25, 30, 35, 40, 44):
        wall = (STEPS - k) * costs["computed_s"] + k * costs["skipped_s"]
        rows.append({"skipped": k, "wall_s": wall, "speedup": STEPS * costs["computed_s"] / wall})
    return rows


def table(r: dict) -> str:
    mc, cc = r["model_cache"], r["cpu_cache"]
    if "error" in cc:
        cpu_line = f"residuals on the CPU: not measured ({cc['error']})"
    else:
        cpu_line = (
            f"residuals on the CPU: computed {cc['computed_s']:.3f} s, skipped {cc['skipped_s'] * 1e3:.1f} ms "
            f"({100 * cc['skip_over_computed']:.2f} %); download {cc['download_s'] * 1e3:.1f} ms, "
            f"upload {cc['upload_s'] * 1e3:.1f} ms per step"
        )
    lines = [
        f"{r['case']}, CFG batched (B = 2), {r['tokens']:,} tokens per row",
        f"computed step {mc['computed_s']:.3f} s; skipped step {mc['skipped_s'] * 1e3:.1f} ms "
        f"({100 * mc['skip_over_computed']:.2f} % of computed)",
        cpu_line,
        f"skipped step within {100 * SKIP_TARGET:.0f} % of a computed one: "
        f"{'yes' if r['skip_within_target'] else 'NO'}",
        "",
        f"| skipped of {STEPS} | wall s (GPU cache) | speedup | wall s (CPU cache) | speedup |",
        "|---|---|---|---|---|",
    ]
    for i, a in enumerate(r["projection"]["model"]):
        b = r["projection"]["cpu"][i] if "cpu" in r["projection"] else None
        cpu_cells = f"{b['wall_s']:.1f} | {b['speedup']:.2f}x" if b else "- | -"
        lines.append(f"| {a['skipped']} | {a['wall_s']:.1f} | {a['speedup']:.2f}x | {cpu_cells} |")
    lines.append("")
    for name, m in r["magcache_14b"].items():
        lines.append(
            f"MagCache {name} (real 14B schedule {m['pattern']}): {m['skipped']} skipped, projected "
            f"{m['projected_wall_s']:.1f} s ({m['speedup']:.2f}x)"
        )
    lines += ["", r["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="14b-720p")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-reps", type=int, default=3, help="full forwards timed (about 23 s each at 14B)")
    parser.add_argument("--reps", type=int, default=10, help="skipped steps and stand-in steps timed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.compute_reps < 1 or args.reps < 1 or args.compute_reps + args.reps > STEPS - 1:
        parser.error(f"need compute-reps >= 1, reps >= 1 and compute-reps + reps <= {STEPS - 1}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: this benchmark measures GPU step costs (smoke-test: --case tiny --device cpu)"
        )
    results = {"device": device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    results["teacache"] = run(CASES[args.case], device, args.compute_reps, args.reps)
    write_json(args.out, results)
    log.info("\n%s", table(results["teacache"]))
    return results


if __name__ == "__main__":
    main()
