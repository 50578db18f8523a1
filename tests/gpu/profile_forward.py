"""Where one forward's GPU time goes: a kernel table of one compiled full-stack forward (torch.profiler).

    python3 -m tests.gpu.profile_forward --model 14b --accelerations '[...recipe dicts...]' --out profile_14b.txt

Builds the model at its real shapes with seeded random weights, applies the accelerations, runs two untimed
forwards (compilation) and profiles the third: the table lists every kernel's total GPU time, grouped by kind
(GEMM, attention, Triton/inductor element-wise, copies, other), so the distance to the dense floor has names; then
where the GPU sat idle: the time between kernels, the recurring gaps by the kernels either side of them, and the wall
time outside the span from the first kernel's start to the last one's end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from triton.runtime.jit import JITFunction

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.attention import sage_inputs
from dax_core.bench.cases import case_for
from dax_core.bench.inputs import make_inputs
from dax_core.bench.timing import device_name, sync
from dax_core.bench.weights import build_model
from dax_core.models import fused_ops, fused_quant
from dax_core.recipe import Recipe

FULL_STACK = [{"kind": "quantize", "dtype": "fp8"}, {"kind": "attention", "backend": "sage"}, {"kind": "compile"}]
DAX_KERNELS = tuple(
    name
    for module in (fused_ops, fused_quant, sage_inputs)
    for name, obj in vars(module).items()
    if isinstance(obj, JITFunction) and name.endswith("_kernel")
)
"""DAX's own Triton kernels (models.fused_ops, models.fused_quant, attention.sage_inputs), a kind of their own."""
KINDS = (
    ("DAX row kernels", DAX_KERNELS),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "scaled_mm", "cublas", "matmul")),
    ("attention", ("attn", "sage", "flash", "fmha", "cudnn")),
    ("quant (sage prep)", ("quant", "per_block", "per_thread", "per_warp", "mean", "transpose_pad")),
    ("triton / inductor", ("triton",)),
    ("copy / cast", ("copy", "cast", "elementwise_kernel", "vectorized")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, marks in KINDS:
        if any(m in low for m in marks):
            return kind
    return "other"


def idle_gaps(kernels: list[tuple[float, float, str]], threshold_us: float = 5.0) -> tuple[float, list[dict]]:
    """The GPU's idle time between kernels given as (start, end, name) in microseconds: the total inside their span,
    and the gaps of at least ``threshold_us`` grouped by the kernels before and after them (the same gap recurs in
    every block), largest total first: {"before", "after", "count", "total_us", "max_us"}."""
    ordered = sorted(kernels)
    idle = 0.0
    groups: dict[tuple[str, str], dict] = {}
    busy_until, before = ordered[0][1], ordered[0][2]
    for start, end, name in ordered[1:]:
        if start > busy_until:
            gap = start - busy_until
            idle += gap
            if gap >= threshold_us:
                g = groups.setdefault((before, name), {"before": before, "after": name, "count": 0, "total_us": 0.0,
                                                       "max_us": 0.0})  # fmt: skip
                g["count"] += 1
                g["total_us"] += gap
                g["max_us"] = max(g["max_us"], gap)
        if end > busy_until:
            busy_until, before = end, name
    return idle, sorted(groups.values(), key=lambda g: -g["total_us"])


def _gap_lines(prof, wall_ms: float) -> list[str]:
    kernels = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]  # fmt: skip
    if not kernels:
        return []
    idle_us, groups = idle_gaps(kernels)
    span_ms = (max(k[1] for k in kernels) - min(k[0] for k in kernels)) / 1000
    lines = [
        "",
        f"GPU idle between kernels {idle_us / 1000:.1f} ms; wall outside the kernels' span {wall_ms - span_ms:.1f} ms",
        f"{'ms':>9} {'gaps':>5} {'max us':>7}  kernel before -> kernel after",
    ]
    for g in groups[:15]:
        lines.append(f"{g['total_us'] / 1000:9.2f} {g['count']:5d} {g['max_us']:7.0f}  {g['before'][:70]} -> "
                     f"{g['after'][:70]}")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="14b")
    p.add_argument("--video")
    p.add_argument("--accelerations", default=json.dumps(FULL_STACK))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (CPU kernels)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    case = case_for(args.model, args.video)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    model = build_model(case.spec, device, torch.bfloat16, seed=0)
    recipe = Recipe.from_dict({"weights": "random", "accelerations": json.loads(args.accelerations)})
    apply_accelerations(model, recipe, BuildEnv(device))
    inputs = make_inputs(case, device, torch.bfloat16, 0)
    with torch.inference_mode():
        for _ in range(2):
            inputs(model)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
            begin = time.perf_counter()
            inputs(model)
            sync(device)
            wall_ms = 1000 * (time.perf_counter() - begin)
    rows = []
    for e in prof.key_averages():
        t = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if t > 0:
            rows.append((t / 1000.0, e.count, e.key))
    rows.sort(reverse=True)
    by_kind: dict[str, float] = defaultdict(float)
    for ms, _, name in rows:
        by_kind[kind_of(name)] += ms
    total = sum(ms for ms, _, _ in rows)
    command = "python3 -m tests.gpu.profile_forward " + shlex.join(sys.argv[1:])
    lines = [f"{case.name}: {recipe.to_dict()['accelerations']}",
             f"{device_name(device)}, torch {torch.__version__}: {command}"]  # fmt: skip
    lines.append(f"forward (wall, profiled) {wall_ms:.1f} ms; kernels {total:.1f} ms")
    for kind, ms in sorted(by_kind.items(), key=lambda x: -x[1]):
        lines.append(f"  {kind:22s} {ms:9.1f} ms {100 * ms / total:5.1f} %")
    lines += ["", f"{'ms':>9} {'calls':>6} {'ms/call':>8}  kernel"]
    lines += [f"{ms:9.2f} {n:6d} {ms / n:8.3f}  {name[:150]}" for ms, n, name in rows[:45]]
    if on_gpu:
        lines += _gap_lines(prof, wall_ms)
    args.out.write_text("\n".join(lines) + "\n")
    logging.info("\n%s", "\n".join(lines[:12]))


if __name__ == "__main__":
    main()
