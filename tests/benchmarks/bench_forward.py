"""One transformer forward (one CFG branch), bf16 + SDPA: dax_core against diffusers' WanTransformer3DModel
with the same random weights, in the same process, at Wan2.1's real shapes.

    python -m tests.benchmarks.bench_forward --case 14b-720p --case 1.3b-480p --out results.json
"""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path

import torch

from .common import CASES, Case, build_diffusers, build_ours, cuda_time, device_name, floor_seconds, median, write_json

log = logging.getLogger("bench_forward")


def _inputs(case: Case, dtype: torch.dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(case.latent_shape, generator=g, device="cuda")
    t = torch.tensor([700.0], device="cuda")
    ctx = torch.randn(1, 512, case.spec.text_dim, generator=g, device="cuda").to(dtype)
    return x, t, ctx


def _measure_and_free(make_forward, warmup: int, reps: int) -> tuple[dict, torch.Tensor]:
    """Build (via make_forward), time, keep the output on the CPU, and free the model before returning."""
    forward = make_forward()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = cuda_time(forward, warmup, reps)
    stats = {
        "median_s": median(times),
        "times_s": times,
        "weights_gib": base / 2**30,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    out = forward().float().cpu()
    del forward
    gc.collect()
    torch.cuda.empty_cache()
    return stats, out


@torch.inference_mode()
def run_case(key: str, warmup: int, reps: int, seed: int = 0) -> dict:
    case = CASES[key]
    dtype = torch.bfloat16
    x, t, ctx = _inputs(case, dtype, seed + 1)
    result: dict = {"case": case.name, "tokens": case.tokens, "flops": case.flops(), "floor_s": floor_seconds(case)}

    def dax_forward():
        ours = build_ours(case.spec, "cuda", dtype, seed)
        return lambda: ours(x, t, ctx)

    def diffusers_forward():
        ref = build_diffusers(case.spec, "cuda", dtype, seed)
        return lambda: ref(x.to(dtype), t, ctx, return_dict=False)[0]

    result["dax_core"], out_ours = _measure_and_free(dax_forward, warmup, reps)
    result["diffusers"], out_ref = _measure_and_free(diffusers_forward, warmup, reps)
    result["time_ratio_dax_over_diffusers"] = result["dax_core"]["median_s"] / result["diffusers"]["median_s"]
    result["dax_fraction_of_floor"] = result["floor_s"] / result["dax_core"]["median_s"]
    result["diffusers_fraction_of_floor"] = result["floor_s"] / result["diffusers"]["median_s"]
    diff = (out_ours - out_ref).norm() / out_ref.norm()
    cos = torch.nn.functional.cosine_similarity(out_ours.flatten(), out_ref.flatten(), dim=0)
    result["output_rel_diff"] = diff.item()
    result["output_cosine"] = cos.item()
    log.info("%s: dax %.3f s, diffusers %.3f s, ratio %.3f, rel diff %.2e", key, result["dax_core"]["median_s"],
             result["diffusers"]["median_s"], result["time_ratio_dax_over_diffusers"], diff.item())  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", action="append", choices=sorted(CASES), required=True)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = {"device": device_name(), "torch": torch.__version__, "cases": {}}
    for key in args.case:
        results["cases"][key] = run_case(key, args.warmup, args.reps)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
