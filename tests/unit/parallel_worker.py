"""One rank of the sequence-parallel tests (CPU with gloo, or one GPU per rank with NCCL), and ``launch``,
which starts N of them:

    python tests/unit/parallel_worker.py --rank R --world N --port P --cases JSON --out DIR [--device cuda]

For every case it runs the tiny model single-process (the reference), then with sequence parallelism (both
schedules), then again after disabling it, and writes the differences to DIR/rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dax_core.compile import CompileConfig, compile_blocks  # noqa: E402
from dax_core.models.spec import WanSpec  # noqa: E402
from dax_core.models.wan import WanModel  # noqa: E402
from dax_core.parallel import ParallelConfig, disable_sequence_parallel, enable_sequence_parallel  # noqa: E402
from tests.benchmarks.common import build_ours  # noqa: E402

SPEC = WanSpec(dim=96, num_layers=2, num_heads=12, ffn_dim=128, text_dim=32, freq_dim=32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TIMESTEPS = (900.0, 600.0)  # two forwards per run, so accelerations that keep state between steps are exercised


@dataclass(frozen=True)
class Variant:
    """An acceleration applied to the model before both the reference and the parallel runs."""

    apply: Callable[[WanModel], None]
    reset: Callable[[WanModel], None] = lambda model: None  # per-run state cleared before every run
    layouts: tuple[str, ...] | None = None  # the layouts it runs with; None: all of them


def _compile(model: WanModel) -> None:
    # Graph capture (dynamo, fullgraph) and AOT tracing of the collectives; inductor needs a C++ toolchain
    compile_blocks(model, CompileConfig(backend="aot_eager"))


VARIANTS: dict[str, Variant] = {
    "plain": Variant(apply=lambda model: None),
    "compiled": Variant(apply=_compile, layouts=("ulysses2", "ring2", "ulysses2-ring2")),
}

LATENT_45 = [2, 16, 3, 6, 10]  # batch 2 (CFG batched), 3×3×5 = 45 tokens: not a multiple of 2 or 4
LATENT_45_B1 = [1, 16, 3, 6, 10]
LATENT_5 = [2, 16, 1, 2, 10]  # 1×1×5 = 5 tokens: with 4 slices the last rank holds only padding


def _case(ulysses: int, ring: int, cfg: bool = False, latent=LATENT_45, dtype: str = "fp32") -> dict:
    return {"ulysses": ulysses, "ring": ring, "cfg_parallel": cfg, "latent": latent, "dtype": dtype}


LAYOUTS = {
    2: {
        "ulysses2": _case(2, 1),
        "ring2": _case(1, 2),
        "cfg2": _case(1, 1, cfg=True),
        "ulysses2-batch1": _case(2, 1, latent=LATENT_45_B1),
        "ring2-5tokens": _case(1, 2, latent=LATENT_5),
        "ulysses2-bf16": _case(2, 1, dtype="bf16"),
        "ring2-bf16": _case(1, 2, dtype="bf16"),
    },
    4: {
        "ulysses2-ring2": _case(2, 2),
        "ulysses4": _case(4, 1),
        "ring4": _case(1, 4),
        "cfg-ulysses2": _case(2, 1, cfg=True),
        "cfg-ring2": _case(1, 2, cfg=True),
        "ulysses2-ring2-5tokens": _case(2, 2, latent=LATENT_5),
        "ring4-5tokens": _case(1, 4, latent=LATENT_5),
    },
}
CASES = {
    world: {
        f"{name}-{v}": {**case, "variant": v}
        for name, case in layouts.items()
        for v, variant in VARIANTS.items()
        if variant.layouts is None or name in variant.layouts
    }
    for world, layouts in LAYOUTS.items()
}
"""world size -> case name -> case: every layout with every variant."""


def _inputs(case: dict, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case["latent"], generator=g)
    ctx = torch.randn(case["latent"][0], 7, SPEC.text_dim, generator=g).to(dtype)
    return x.to(device), ctx.to(device)


def _run(model: WanModel, variant: Variant, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    variant.reset(model)
    outs = [model(x, torch.full((x.shape[0],), t, device=x.device), ctx) for t in TIMESTEPS]
    return torch.stack(outs).float()


def run_case(case: dict, world: int, device: str) -> dict:
    dtype = DTYPES[case["dtype"]]
    variant = VARIANTS[case["variant"]]
    model = build_ours(SPEC, device, dtype, seed=0)
    variant.apply(model)
    x, ctx = _inputs(case, dtype, device)
    ref = _run(model, variant, x, ctx)
    outs = {}
    for overlap in (True, False):
        config = ParallelConfig(world, case["ulysses"], case["ring"], case["cfg_parallel"], overlap)
        enable_sequence_parallel(model, config)
        outs[overlap] = _run(model, variant, x, ctx)
        disable_sequence_parallel(model)
    restored = _run(model, variant, x, ctx)
    return {
        "ref_max": ref.abs().max().item(),
        "err_overlap": (outs[True] - ref).abs().max().item(),
        "err_plain": (outs[False] - ref).abs().max().item(),
        "overlap_vs_plain": (outs[True] - outs[False]).abs().max().item(),
        "restored_vs_ref": (restored - ref).abs().max().item(),
        "finite": bool(torch.isfinite(outs[True]).all() and torch.isfinite(outs[False]).all()),
    }


def _error(fn: Callable[[], object]) -> str:
    try:
        fn()
    except (ValueError, RuntimeError) as e:
        return str(e)
    return ""


def checks(world: int, device: str) -> dict:
    """Collective behaviour besides the forward: misfits are errors, all_reduce sums over every rank."""
    model = build_ours(SPEC, device, torch.float32, seed=0)
    out: dict = {"wrong_world": _error(lambda: enable_sequence_parallel(model, ParallelConfig(2 * world, 2, world)))}
    plan = enable_sequence_parallel(model, ParallelConfig(world, 1, 1, cfg_parallel=True) if world == 2 else
                                    ParallelConfig(world, 2, 1, cfg_parallel=True))  # fmt: skip
    x = torch.randn(1, 16, 1, 4, 4, device=device)
    ctx = torch.randn(1, 7, SPEC.text_dim, device=device)
    out["odd_batch_cfg"] = _error(lambda: model(x, torch.tensor([500.0], device=device), ctx))
    out["enable_twice"] = _error(lambda: enable_sequence_parallel(model, ParallelConfig(world, world)))
    out["all_reduce"] = plan.all_reduce(torch.tensor([float(dist.get_rank() + 1)], device=device)).item()
    disable_sequence_parallel(model)
    if world == 4:  # two independent pairs, each running Ulysses on its own 2-rank group
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        x, ctx = _inputs({"latent": LATENT_45}, torch.float32, device)
        t = torch.full((x.shape[0],), 500.0, device=device)
        ref = model(x, t, ctx)
        enable_sequence_parallel(model, ParallelConfig(2, 2), group=pairs[dist.get_rank() // 2])
        out["pair_ulysses_err"] = (model(x, t, ctx) - ref).abs().max().item()
        disable_sequence_parallel(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device == "cuda":
        torch.cuda.set_device(args.rank)
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast: these exchanges don't use it
    dist.init_process_group(
        "nccl" if args.device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
        world_size=args.world, timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        with torch.inference_mode():
            cases = json.loads(args.cases)
            results = {name: run_case(case, args.world, args.device) for name, case in cases.items()}
            results["checks"] = checks(args.world, args.device)
    finally:
        dist.destroy_process_group()
    (args.out / f"rank{args.rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, cases: dict, out: Path, device: str = "cpu", timeout_s: float = 150.0) -> list[dict]:
    """Run ``cases`` on ``world`` worker processes; every rank's results, or RuntimeError with a rank's log."""
    port = _free_port()
    logs = [out / f"rank{r}.log" for r in range(world)]
    procs = []
    for rank in range(world):
        cmd = [sys.executable, __file__, "--rank", str(rank), "--world", str(world), "--port", str(port)]
        cmd += ["--cases", json.dumps(cases), "--out", str(out), "--device", device]
        procs.append(subprocess.Popen(cmd, stdout=logs[rank].open("w"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        logs_text = "\n".join(f"--- rank {r}:\n{logs[r].read_text()[-2000:]}" for r in failed)
        raise RuntimeError(f"{world}-process run failed on ranks {failed} (timeout {timeout_s:.0f} s):\n{logs_text}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    main()
