"""Wan2.2 A14B on one GPU: both experts resident (bf16, and FP8 linears), and what swapping an expert in from
pinned host memory costs, at real shapes with seeded random weights (step time does not depend on weight values).

``python -m tests.benchmarks.bench_expert_swap [--dtypes bf16 fp8] [--reps 3] [--out swap.json]``

Per weight format: the GPU memory both experts hold, the first offload of one (its pinned host copy is made then),
then ``reps`` swaps (offload the other, load this one: what ``ExpertPair`` does at the boundary), median seconds
and the host-to-device rate. A benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
from pathlib import Path

import torch

from dax_core.accelerations import BuildEnv
from dax_core.bench.timing import device_name, median
from dax_core.bench.weights import build_model
from dax_core.models.spec import WAN22_T2V_A14B
from dax_core.quant.config import QuantizeConfig
from dax_core.runtime.host_offload import HostOffload

log = logging.getLogger(__name__)
GIB = 1024**3


def measure(dtype: str, reps: int, device: torch.device) -> dict:
    experts = []
    for seed in (1, 2):
        model = build_model(WAN22_T2V_A14B, device, torch.bfloat16, seed)
        if dtype == "fp8":
            QuantizeConfig("fp8").apply(model, BuildEnv(device))
        experts.append(model)
        gc.collect()
        torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated(device)
    offloads = [HostOffload(m, device) for m in experts]
    first_offload = offloads[0].offload()
    swaps = []
    for i in range(1 + reps):  # alternate: bring in the first expert, then the second, ...
        coming, going = offloads[i % 2], offloads[1 - i % 2]
        swaps.append(going.offload() + coming.load())
    seconds = median(swaps[1:])  # the first swap makes the second expert's pinned host copy
    result = {
        "dtype": dtype,
        "expert_gib": offloads[0].bytes / GIB,
        "both_resident_gib": resident / GIB,
        "first_offload_s": first_offload,
        "swap_s": swaps,
        "swap_median_s": seconds,
        "host_to_device_gb_s": offloads[0].bytes / seconds / 1e9,
        "free_gib_both_resident": (torch.cuda.mem_get_info(device)[1] - resident) / GIB,
    }
    del experts, offloads
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--reps", type=int, default=3, help="swaps timed after the first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda")
    results = {"device": device_name(device), "cases": []}
    for dtype in args.dtypes:
        case = measure(dtype, args.reps, device)
        log.info("%s", json.dumps(case))
        results["cases"].append(case)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
