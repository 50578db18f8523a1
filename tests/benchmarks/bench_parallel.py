"""Sequence parallelism on N GPUs against one GPU, and against diffusers' Ulysses context parallelism.

    torchrun --nproc_per_node=2 -m tests.benchmarks.bench_parallel --out results.json

One step = one DiT forward with classifier-free guidance batched (batch 2: conditional and unconditional
text, 512 tokens each), bf16, PyTorch SDPA, random weights at Wan2.1's real shapes, seeded per parameter
name so every rank and diffusers hold identical weights. Per case, in one run:

1. one GPU: rank 0 alone runs the step while the other ranks wait;
2. N GPUs with dax_core sequence parallelism (``ParallelConfig.auto``: Ulysses over all GPUs when the
   heads allow), overlap on, then overlap off;
3. one profiled step of each: NCCL kernel time and compute kernel time against the step's wall time;
4. diffusers' WanTransformer3DModel with ``ContextParallelConfig(ulysses_degree=N)``, same weights and inputs.

Times are the median of --reps steps after --warmup, all ranks starting together, the slowest rank's time.
``--device cpu --case smoke`` runs the same steps on a tiny model with gloo, to check the script without GPUs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from dax_core.models.spec import WanSpec
from dax_core.parallel import ParallelConfig, disable_sequence_parallel, enable_sequence_parallel

from .common import CASES, TEXT_TOKENS, Case, build_diffusers, build_ours, device_name, median, sync, write_json

log = logging.getLogger("bench_parallel")
DTYPE = torch.bfloat16
SEED = 0
BENCH_CASES = {
    **CASES,
    "smoke": Case("tiny smoke test", WanSpec(dim=128, num_layers=2, num_heads=4, ffn_dim=256, text_dim=64), 64, 48, 5),
}
Step = Callable[[], torch.Tensor]


def _init(device_type: str) -> tuple[int, int, torch.device]:
    if "LOCAL_RANK" not in os.environ:
        raise SystemExit("launch with torchrun: torchrun --nproc_per_node=2 -m tests.benchmarks.bench_parallel --out F")
    local = int(os.environ["LOCAL_RANK"])
    timeout = timedelta(minutes=5)  # the longest wait: the other ranks while rank 0 times the 14B step alone
    if device_type == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast: all-to-all and all-gather don't use it
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def _barrier(device: torch.device) -> None:
    sync(device)
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def _inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CFG batch: one latent twice, the same timestep, two different texts. Made on the CPU from a
    seed, so every rank holds the same numbers."""
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(case.latent_shape, generator=g).repeat(2, 1, 1, 1, 1)
    ctx = torch.randn(2, TEXT_TOKENS, case.spec.text_dim, generator=g).to(DTYPE)
    return x.to(device), torch.full((2,), 700.0, device=device), ctx.to(device)


def _time(step: Step, device: torch.device, warmup: int, reps: int, together: bool) -> tuple[dict, torch.Tensor]:
    """Median wall time of ``step``; ``together``: every rank runs it, timed from a common start, and the
    slowest rank's time counts. Returns the stats and the first output (on the CPU, float32)."""
    out = step().float().cpu()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(reps):
        if together:
            _barrier(device)
        else:
            sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    if together:
        slowest = torch.tensor(times, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times = slowest.tolist()
    return {"median_s": median(times), "times_s": times}, out


def _profile(step: Step, device: torch.device) -> dict:
    """One step under the profiler on every rank: NCCL kernel time and compute kernel time (one stream, so
    their sum is the time the GPU computed) against the wall time. Reports this rank's numbers."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _barrier(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        sync(device)
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    nccl = sum(e.time_range.elapsed_us() for e in kernels if "nccl" in e.name.lower()) / 1e6
    compute = sum(e.time_range.elapsed_us() for e in kernels if "nccl" not in e.name.lower()) / 1e6
    return {
        "wall_s": wall,
        "nccl_kernel_s": nccl,
        "compute_kernel_s": compute,
        "nccl_share": nccl / wall,
        "compute_idle_share": max(0.0, wall - compute) / wall,
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _memory_gib(device: torch.device, peak: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**30


def _ours(case: Case, world: int, rank: int, device: torch.device, args) -> tuple[dict, torch.Tensor | None]:
    model = build_ours(case.spec, str(device), DTYPE, SEED)
    inputs = _inputs(case, device)
    result: dict = {"weights_gib": _memory_gib(device)}
    ref = None
    if rank == 0:
        result["one_gpu"], ref = _time(lambda: model(*inputs), device, args.warmup, args.reps, together=False)
        log.info("%s: 1 GPU %.3f s", case.name, result["one_gpu"]["median_s"])
    _barrier(device)
    for overlap in (True, False):
        config = ParallelConfig.auto(world, case.spec, overlap=overlap)
        enable_sequence_parallel(model, config)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats, out = _time(lambda: model(*inputs), device, args.warmup, args.reps, together=True)
        stats["peak_gib"] = _memory_gib(device, peak=True)
        stats["profile"] = _profile(lambda: model(*inputs), device)
        stats["layout"] = config.describe()
        if ref is not None:
            stats["output_rel_diff_vs_one_gpu"] = _rel(out, ref)
        result["overlap_on" if overlap else "overlap_off"] = stats
        disable_sequence_parallel(model)
        log.info("%s: %s: %.3f s", case.name, config.describe(), stats["median_s"])
    return result, ref


def _diffusers(case: Case, world: int, device: torch.device, args, ref: torch.Tensor | None) -> dict:
    from diffusers import ContextParallelConfig

    model = build_diffusers(case.spec, device, DTYPE, SEED)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    x, t, ctx = _inputs(case, device)
    step = lambda: model(x.to(DTYPE), t, ctx, return_dict=False)[0]  # noqa: E731
    stats, out = _time(step, device, args.warmup, args.reps, together=True)
    stats["layout"] = f"ContextParallelConfig(ulysses_degree={world})"
    if ref is not None:
        stats["output_rel_diff_vs_dax_one_gpu"] = _rel(out, ref)
    return stats


@torch.inference_mode()
def run_ours(key: str, world: int, rank: int, device: torch.device, args) -> tuple[dict, torch.Tensor | None]:
    case = BENCH_CASES[key]
    result: dict = {"case": case.name, "tokens": case.tokens, "batch": 2, "gpus": world}
    ours, ref = _ours(case, world, rank, device, args)
    _free(device)  # the model went with _ours
    result.update(ours)
    if rank == 0:
        one, on = result["one_gpu"]["median_s"], result["overlap_on"]["median_s"]
        result["ratio_n_gpu_over_one"] = on / one
        result["scaling_efficiency"] = one / (world * on)
        result["overlap_off_over_on"] = result["overlap_off"]["median_s"] / on
    return result, ref


@torch.inference_mode()
def run_diffusers(key: str, world: int, device: torch.device, args, ref: torch.Tensor | None) -> dict:
    try:
        return _diffusers(BENCH_CASES[key], world, device, args, ref)
    except ImportError as e:
        return {"status": f"not installed ({e})"}
    except Exception as e:  # a failure of the comparison is a result too; ours are already written
        log.exception("diffusers context parallelism failed")
        return {"status": f"failed: {type(e).__name__}: {e}"}
    finally:
        _free(device)


def _table(results: dict) -> str:
    head = (
        "| case | 1 GPU s | N GPU s | N/1 | efficiency | overlap off s | diffusers N GPU s | ours/diffusers "
        "| NCCL share on/off | compute idle on/off | rel diff |"
    )
    rows = [head, "|" + "---|" * 11]
    for r in results["cases"].values():
        on, off, dif = r["overlap_on"], r["overlap_off"], r["diffusers"]
        dif_s = f"{dif['median_s']:.3f}" if "median_s" in dif else dif["status"]
        ratio = f"{r['ours_over_diffusers']:.3f}" if "ours_over_diffusers" in r else "-"
        p_on, p_off = on["profile"], off["profile"]
        rows.append(
            f"| {r['case']} ({r['gpus']} GPUs) | {r['one_gpu']['median_s']:.3f} | {on['median_s']:.3f} "
            f"| {r['ratio_n_gpu_over_one']:.3f} | {r['scaling_efficiency']:.1%} | {off['median_s']:.3f} | {dif_s} "
            f"| {ratio} | {p_on['nccl_share']:.1%} / {p_off['nccl_share']:.1%} "
            f"| {p_on['compute_idle_share']:.1%} / {p_off['compute_idle_share']:.1%} "
            f"| {on['output_rel_diff_vs_one_gpu']:.1e} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(BENCH_CASES), help="default: 1.3b-480p, 14b-720p")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-diffusers", dest="diffusers", action="store_false", help="skip diffusers")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.warmup < 1 or args.reps < 1:
        parser.error("--warmup and --reps must be at least 1")
    rank, world, device = _init(args.device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    results: dict = {"device": device_name(), "torch": torch.__version__, "gpus": world, "cases": {}}
    start = time.perf_counter()
    try:
        for key in args.case or ["1.3b-480p", "14b-720p"]:
            result, ref = run_ours(key, world, rank, device, args)
            results["cases"][key] = result
            if rank == 0:
                write_json(args.out, results)
            result["diffusers"] = run_diffusers(key, world, device, args, ref) if args.diffusers else {"status": "off"}
            if rank == 0 and "median_s" in result["diffusers"]:
                result["ours_over_diffusers"] = result["overlap_on"]["median_s"] / result["diffusers"]["median_s"]
            if rank == 0:
                write_json(args.out, results)
        if rank == 0:
            results["total_s"] = time.perf_counter() - start
            write_json(args.out, results)
            log.info("\n%s\ntotal %.0f s", _table(results), results["total_s"])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
