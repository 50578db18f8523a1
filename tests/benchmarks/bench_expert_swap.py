"""Wan2.2 A14B on one GPU: both experts resident (bf16, and FP8 linears), and what swapping an expert in from
pinned host memory costs, at real shapes with seeded random weights (step time does not depend on weight values).

``python -m tests.benchmarks.bench_expert_swap [--dtypes bf16 fp8] [--reps 3] [--video 1280x720x81]
[--forward-stack eager|full] [--out swap.json]``

Per weight format: the GPU memory both experts hold, the first offload of one (its pinned host copy is made then),
then ``reps`` swaps (offload the other, load this one: what ``ExpertPair`` does at the boundary), median seconds
and the host-to-device rate; then one forward of an expert at ``--video`` (eager, PyTorch SDPA, after one untimed
call; ``--video none`` skips it; ``--forward-stack full``: SageAttention2 and compiled blocks, with FP8 linears the
full stack) and the projected transformer time of a 40-step run with CFG (the official A14B
step count): both experts resident, and taking turns (one swap at the boundary). A benchmark, never a timed test;
results: docs/benchmarks/wan22_a14b_h200.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

import torch

from dax_core.accelerations import BuildEnv
from dax_core.attention.config import AttentionConfig
from dax_core.bench.cases import Case, case_for
from dax_core.bench.inputs import make_inputs
from dax_core.bench.timing import device_name, median, timed
from dax_core.bench.weights import build_model
from dax_core.compile import CompileConfig
from dax_core.models.spec import WAN22_T2V_A14B
from dax_core.models.wan import WanModel
from dax_core.quant.config import QuantizeConfig
from dax_core.runtime.host_offload import HostOffload

log = logging.getLogger(__name__)
GIB = 1024**3
STEPS = 40
"""Denoising steps of the official Wan2.2 A14B configurations (``sample_steps = 40``); with CFG two forwards a step."""


def projected_run(forward_s: float, swap_s: float, steps: int = STEPS) -> dict:
    """Transformer seconds of a ``steps``-step run with CFG (two forwards a step; both experts have the same shapes,
    so where the boundary falls does not change it): both experts resident, and taking turns, one swap at the
    boundary."""
    resident = 2 * steps * forward_s
    return {"steps": steps, "resident_s": resident, "taking_turns_s": resident + swap_s}


FORWARD_STACKS = ("eager", "full")
"""The timed forward's levers besides the weight format: none (PyTorch SDPA, eager), or SageAttention2 and regional
compile (with FP8 linears, the full stack)."""


@torch.inference_mode()
def forward_seconds(model: WanModel, case: Case, device: torch.device, stack: str = "eager") -> dict:
    """One forward (one CFG branch) of ``model`` at ``case``'s shapes after one untimed call."""
    if stack == "full":
        for lever in (AttentionConfig(backend="sage"), CompileConfig(backend="inductor")):
            lever.apply(model, BuildEnv(device))
    inputs = make_inputs(case, device, model.compute_dtype, 0)
    first, second = timed(lambda: inputs(model), 2, device)
    return {"case": case.name, "stack": stack, "first_s": first, "forward_s": second}


def measure(dtype: str, reps: int, device: torch.device, case: Case | None, stack: str = "eager") -> dict:
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
    if case is not None:
        for offload in offloads:  # both resident again (a resident one's load does nothing)
            offload.load()
        result["forward"] = forward_seconds(experts[0], case, device, stack)
        result["projected"] = projected_run(result["forward"]["forward_s"], seconds)
    del experts, offloads
    gc.collect()
    torch.cuda.empty_cache()
    return result


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else f"{value:{fmt}}"


def markdown(results: dict) -> str:
    """The results as a Markdown table, with the device and the command."""
    lines = [
        f"# Wan2.2 A14B on one GPU: both experts, the swap, a {STEPS}-step run projected ({results['device']})",
        "",
        f"Command: `{results['command']}` (torch {results['torch']}). Seeded random weights at the experts' real "
        f"shapes; a swap = one expert offloaded to pinned host memory and the other loaded (median of the timed "
        f"swaps after the first); the forward: one CFG branch (stack eager: PyTorch SDPA; full: + SageAttention2 "
        f"and compiled blocks); projected: {STEPS} steps x 2 forwards, the transformer only.",
        "",
        "| weights | forward stack | one expert GiB | both resident GiB | free GiB, both resident | first offload s "
        "| swap s | host to device GB/s | forward s | 40 steps resident s | 40 steps taking turns s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        forward, projected = c.get("forward", {}), c.get("projected", {})
        lines.append(
            f"| {c['dtype']} | {forward.get('stack', '—')} | {c['expert_gib']:.1f} | {c['both_resident_gib']:.1f} | "
            f"{c['free_gib_both_resident']:.1f} | {c['first_offload_s']:.2f} | {c['swap_median_s']:.2f} | "
            f"{c['host_to_device_gb_s']:.1f} | {_num(forward.get('forward_s'), '.3f')} | "
            f"{_num(projected.get('resident_s'), '.1f')} | {_num(projected.get('taking_turns_s'), '.1f')} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--reps", type=int, default=3, help="swaps timed after the first")
    parser.add_argument("--video", default="1280x720x81", help="WIDTHxHEIGHTxFRAMES of the timed forward, or none")
    parser.add_argument("--forward-stack", default="eager", choices=FORWARD_STACKS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        case = None if args.video == "none" else case_for("14b", args.video)  # each expert has T2V 14B's shapes
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda")
    command = "python -m tests.benchmarks.bench_expert_swap " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {"device": device_name(device), "torch": torch.__version__, "command": command.strip(), "cases": []}
    for dtype in args.dtypes:
        entry = measure(dtype, args.reps, device, case, args.forward_stack)
        log.info("%s", json.dumps(entry))
        results["cases"].append(entry)
        if args.out:  # after every weight format, so a run cut short keeps what it measured
            args.out.write_text(json.dumps(results, indent=2))
            args.out.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
