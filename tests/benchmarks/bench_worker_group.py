"""The worker group on 2 GPUs: start-up time with real loading, and the per-prompt overhead of a warm group.

    python -m tests.benchmarks.bench_worker_group --out results.json [--weights-dir DIR] [--gpus 2]

Start-up loads Wan2.1-1.3B-shaped random bf16 weights (~2.8 GB, written once to ``--weights-dir``) on every rank:
process start, NCCL init, loading, ready. The overhead is a 1-step prompt through the warm group minus
the same 1-step prompt in this process (same weights, same GPU model), and minus the ranks' own loop time; the
target is at most 0.5 s. The overhead group runs without sequence parallelism (every rank computes the whole step,
as this process does), so the difference is the group's own cost: request and result transfer, the stop votes
after every block and step (a CPU flag on a gloo group), heartbeats, progress messages. Two latent sizes: a small
one (overhead dominates) and 832x480x81 (real transfer sizes).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import zlib
from pathlib import Path

import torch

from dax_core.models.detect import NUM_HEADS_METADATA
from dax_core.models.spec import WAN21_T2V_1_3B
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.group import GroupConfig, WorkerGroup

from .common import device_name, median, write_json

log = logging.getLogger("bench_worker_group")

OVERHEAD_TARGET_S = 0.5
LATENTS = {"small 256x256x5": (1, 16, 2, 32, 32), "832x480x81": (1, 16, 21, 60, 104)}
TEXT_TOKENS = 512


def write_random_weights(path: Path) -> Path:
    """Wan2.1-1.3B-shaped random bf16 weights (generated on the GPU, written once)."""
    if path.is_file():
        return path
    from safetensors.torch import save_file

    spec = WAN21_T2V_1_3B
    meta = WanModel(spec, device="meta")
    tensors = {}
    for name, p in meta.named_parameters():
        g = torch.Generator(device="cuda").manual_seed(zlib.crc32(name.encode()))
        std = 0.1 if name.endswith("modulation") else (0.5 / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.02)
        values = torch.randn(p.shape, generator=g, device="cuda") * std
        if p.ndim == 1 and "norm" in name:
            values += 1.0
        tensors[name] = values.to(torch.bfloat16).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={NUM_HEADS_METADATA: str(spec.num_heads)})
    tmp.rename(path)
    return path


def request(shape: tuple[int, ...]) -> SampleRequest:
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, TEXT_TOKENS, WAN21_T2V_1_3B.text_dim, generator=g).to(torch.bfloat16)
    return SampleRequest(text, text.flip(1), torch.zeros(shape), seed=1, steps=1, cfg=5.0, sampler="euler")


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, default=Path(tempfile.gettempdir()) / "dax-bench")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if torch.cuda.device_count() < args.gpus:
        parser.error(f"needs {args.gpus} GPUs, found {torch.cuda.device_count()}")

    start = time.perf_counter()
    weights = write_random_weights(args.weights_dir / "wan2.1-t2v-1.3b-random-bf16.safetensors")
    results: dict = {"device": device_name(), "gpus": args.gpus, "weights_gb": weights.stat().st_size / 1e9}
    results["write_weights_s"] = time.perf_counter() - start
    recipe = Recipe(str(weights), compute_dtype="bf16")

    start = time.perf_counter()
    engine = WanEngine.build(recipe, "cuda:0")
    results["in_process_build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    group = WorkerGroup(recipe, GroupConfig(args.gpus, device="cuda", parallel=None))
    results["group_start_s"] = time.perf_counter() - start
    try:
        results["cases"] = {}
        for name, shape in LATENTS.items():
            req = request(shape)
            engine.sample(req)  # warm-up: kernels, caches
            group.sample(req)
            here = median(timed(lambda req=req: engine.sample(req), args.reps))
            loops: list[float] = []
            walls = timed(lambda req=req, loops=loops: loops.append(group.sample(req).seconds), args.reps)
            wall = median(walls)
            results["cases"][name] = {
                "in_process_s": here,
                "group_s": wall,
                "overhead_vs_in_process_s": wall - here,
                "overhead_vs_rank_loop_s": median([w - loop for w, loop in zip(walls, loops, strict=True)]),
            }
        start = time.perf_counter()
    finally:
        group.close()
    results["group_close_s"] = time.perf_counter() - start
    worst = max(max(c["overhead_vs_in_process_s"], c["overhead_vs_rank_loop_s"]) for c in results["cases"].values())
    results["overhead_target_s"] = OVERHEAD_TARGET_S
    results["overhead_within_target"] = worst <= OVERHEAD_TARGET_S
    write_json(args.out, results)

    lines = [
        f"worker group on {args.gpus} x {results['device']} ({results['weights_gb']:.1f} GB 1.3B-shaped bf16 weights)",
        f"  in-process build          {results['in_process_build_s']:7.2f} s",
        f"  group start-up            {results['group_start_s']:7.2f} s   (processes, NCCL, load, ready)",
        f"  group close               {results['group_close_s']:7.2f} s",
        f"  {'1-step prompt':24s}  {'here':>7s}  {'group':>7s}  {'overhead':>8s}  {'vs rank loop':>12s}",
    ]
    for name, c in results["cases"].items():
        lines.append(
            f"  {name:24s}  {c['in_process_s']:7.3f}  {c['group_s']:7.3f}  {c['overhead_vs_in_process_s']:8.3f}"
            f"  {c['overhead_vs_rank_loop_s']:12.3f}"
        )
    verdict = "within" if results["overhead_within_target"] else "OVER"
    lines.append(f"  per-prompt overhead {verdict} the {OVERHEAD_TARGET_S} s target (worst {worst:.3f} s)")
    log.info("\n%s", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
