"""One rank of the sequence-parallel tests (CPU with gloo, or one GPU per rank with NCCL), and ``launch``,
which starts N of them:

    python tests/unit/parallel_worker.py --rank R --world N --port P --cases JSON --out DIR [--device cuda]

For every case it runs the tiny model single-process (the reference), then with sequence parallelism (both
schedules), then again after disabling it, and writes the differences to DIR/rank<R>.json. A case's variant
says which accelerations the model carries; with a step cache, a "run" is a short ``WanEngine.sample`` instead
of two bare forwards, and the schedule it took is recorded too.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
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

from dax_core.accelerations import BuildEnv, apply_accelerations  # noqa: E402
from dax_core.attention.radial_config import RadialConfig  # noqa: E402
from dax_core.cache.config import TeacacheConfig  # noqa: E402
from dax_core.compile import CompileConfig  # noqa: E402
from dax_core.models.spec import WanSpec  # noqa: E402
from dax_core.models.tiny import write_tiny_model  # noqa: E402
from dax_core.models.wan import WanModel  # noqa: E402
from dax_core.parallel import ParallelConfig, disable_sequence_parallel, enable_sequence_parallel  # noqa: E402
from dax_core.quant import quantize_dynamic  # noqa: E402
from dax_core.quant.config import QuantizeConfig  # noqa: E402
from dax_core.recipe import Acceleration, Recipe  # noqa: E402
from dax_core.runtime.distributed import build_engine  # noqa: E402
from dax_core.runtime.engine import FEW_STEPS, SampleRequest, WanEngine  # noqa: E402
from dax_core.runtime.group import free_port  # noqa: E402
from tests.benchmarks.common import build_ours  # noqa: E402
from tests.numerics import rel_error  # noqa: E402

log = logging.getLogger("parallel_worker")
SPEC = WanSpec(dim=96, num_layers=2, num_heads=12, ffn_dim=128, text_dim=32, freq_dim=32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TIMESTEPS = (900.0, 600.0)  # two forwards per run, so accelerations that keep state between steps are exercised
SAMPLE_STEPS = FEW_STEPS + 1  # a run of a model with a step cache (fewer steps leave it out): euler, CFG 5 batched

# Graph capture (dynamo, fullgraph) and AOT tracing of the collectives; inductor needs a C++ toolchain
COMPILE = CompileConfig(backend="aot_eager")
FP8 = QuantizeConfig(dtype="fp8")  # per token and per channel: the CPU runs the GEMMs' numerics contract
INT8 = QuantizeConfig(dtype="int8")
# TeaCache on the time embedding (only the first and last steps forced), rescale(x) = x: the distances of these
# models are 0.6 to 1.3 per step, so the 9-step runs skip about every other step, at steps that differ between
# models of different seeds (so ranks holding different replicas decide differently unless they share decisions)
TEACACHE = TeacacheConfig(threshold=1.2, mode="e", coefficients=(1.0, 0.0))
# Radial attention on the exact masked kernel, blocks of 8 tokens (frames of 6): the first layer dense, the second
# sparse (outside a sampling run every forward is past the dense steps)
RADIAL = RadialConfig(kernel="reference", block_size=8)


@dataclass(frozen=True)
class Variant:
    """Accelerations applied to the model, as a worker group's rank applies a recipe's (with the process group),
    before both the reference and the parallel runs."""

    accelerations: tuple[Acceleration, ...] = ()
    layouts: tuple[str, ...] | None = None  # the layouts it runs with; None: all of them
    per_frame: bool = False  # forwards take a timestep per latent frame, the first frame's 0 (Wan2.2 TI2V's)

    @property
    def caches(self) -> bool:
        """Whether the model gets a step cache: its runs are then short sampling runs."""
        return any(a.kind in ("teacache", "magcache") for a in self.accelerations)

    @property
    def quantizes(self) -> bool:
        return any(a.kind == "quantize" for a in self.accelerations)

    @property
    def radial(self) -> bool:
        return any(a.kind == "radial" for a in self.accelerations)


# Quantized linears compute each token's row from that row alone, so only the float32 reorderings of attention
# reach them (0 with Ulysses, ~1e-7 in the ring). CFG-parallel layouts are left out: there every GEMM runs on half
# the batch, the CPU GEMM rounds some rows differently in their last bit, and an 8-bit rounding of one element
# then flips (measured 3e-5 of the scale with INT8): one rounding step, not an error of the split. Step caches
# refuse CFG-parallel.
QUANT_LAYOUTS = ("ulysses2", "ring2", "ulysses2-batch1", "ring2-5tokens", "ulysses2-ring2", "ulysses4", "ring4",
                 "ulysses2-ring2-5tokens", "ring4-5tokens")  # fmt: skip
CACHE_LAYOUTS = ("ulysses2", "ring2", "ring2-5tokens", "ulysses2-ring2", "ulysses4", "ring4")
BOTH_LAYOUTS = ("ulysses2", "ring2", "ulysses2-ring2")  # Ulysses, ring, hybrid
# a timestep per frame cuts the per-token modulation at the slices: every kind of slice, padding and branch split
PER_FRAME_LAYOUTS = ("ulysses2", "ring2", "cfg2", "ring2-5tokens", "ulysses2-ring2", "cfg-ring2", "ring4-5tokens",
                     "ring4-8frames")  # fmt: skip
RADIAL_LAYOUTS = ("ulysses2-8frames", "ring2-8frames", "ulysses2-ring2-8frames", "ulysses4-8frames", "ring4-8frames")

VARIANTS: dict[str, Variant] = {
    "plain": Variant(),
    "compiled": Variant((COMPILE,), layouts=("ulysses2", "ring2", "ulysses2-ring2")),
    "fp8": Variant((FP8,), layouts=QUANT_LAYOUTS),
    "int8": Variant((INT8,), layouts=QUANT_LAYOUTS),
    "teacache": Variant((TEACACHE,), layouts=CACHE_LAYOUTS),
    "teacache-fp8": Variant((FP8, TEACACHE), layouts=BOTH_LAYOUTS),
    "teacache-int8": Variant((INT8, TEACACHE), layouts=BOTH_LAYOUTS),
    "radial": Variant((RADIAL,), layouts=RADIAL_LAYOUTS),
    "radial-compiled": Variant((RADIAL, COMPILE), layouts=("ring2-8frames",)),  # the ring windows traced
    "per-frame": Variant(layouts=PER_FRAME_LAYOUTS, per_frame=True),
}

LATENT_45 = [2, 16, 3, 6, 10]  # batch 2 (CFG batched), 3×3×5 = 45 tokens: not a multiple of 2 or 4
LATENT_45_B1 = [1, 16, 3, 6, 10]
LATENT_5 = [2, 16, 1, 2, 10]  # 1×1×5 = 5 tokens: with 4 slices the last rank holds only padding
# 8 frames of 2×3 = 48 tokens, half of them in the radial mask's blocks of 8; a ring of 4 has slices of 16 tokens
# (whole blocks), the last one only padding, and chunks the mask leaves empty
LATENT_48 = [2, 16, 8, 4, 6]


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
        "ulysses2-8frames": _case(2, 1, latent=LATENT_48),
        "ring2-8frames": _case(1, 2, latent=LATENT_48),
    },
    4: {
        "ulysses2-ring2": _case(2, 2),
        "ulysses4": _case(4, 1),
        "ring4": _case(1, 4),
        "cfg-ulysses2": _case(2, 1, cfg=True),
        "cfg-ring2": _case(1, 2, cfg=True),
        "ulysses2-ring2-5tokens": _case(2, 2, latent=LATENT_5),
        "ring4-5tokens": _case(1, 4, latent=LATENT_5),
        "ulysses2-ring2-8frames": _case(2, 2, latent=LATENT_48),
        "ulysses4-8frames": _case(4, 1, latent=LATENT_48),
        "ring4-8frames": _case(1, 4, latent=LATENT_48),
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


def inputs(case: dict, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case["latent"], generator=g)
    ctx = torch.randn(case["latent"][0], 7, SPEC.text_dim, generator=g).to(dtype)
    return x.to(device), ctx.to(device)


def sample_request(x: torch.Tensor, ctx: torch.Tensor) -> SampleRequest:
    """A run whose CFG batch (cond and uncond, 7 text tokens each) is the case's batch of 2."""
    latent = torch.zeros(1, *x.shape[1:])
    return SampleRequest(ctx[:1], ctx[1:2], latent, seed=3, steps=SAMPLE_STEPS, cfg=5.0, sampler="euler")


def variant_model(case: dict, device: str, env: BuildEnv) -> tuple[WanModel, Recipe]:
    """The seeded tiny model with the case's accelerations applied in ``env``."""
    recipe = Recipe("seeded-random-weights", compute_dtype=case["dtype"])
    for acc in VARIANTS[case["variant"]].accelerations:
        recipe = recipe.with_acceleration(acc)
    model = build_ours(SPEC, device, DTYPES[case["dtype"]], seed=0)
    apply_accelerations(model, recipe, env)
    return model, recipe


def timesteps(x: torch.Tensor, t: float, per_frame: bool) -> torch.Tensor:
    """``t`` for every batch row of ``x``; ``per_frame``: for every latent frame but the first, which gets 0."""
    if not per_frame:
        return torch.full((x.shape[0],), t, device=x.device)
    frames = torch.full((x.shape[0], x.shape[2]), t, device=x.device)
    frames[:, 0] = 0.0
    return frames


def run(
    model: WanModel, recipe: Recipe, x: torch.Tensor, ctx: torch.Tensor, per_frame: bool = False
) -> tuple[torch.Tensor, dict[str, str]]:
    """Two forwards; with a step cache, a short sampling run (the latent) and each branch's schedule."""
    if model.step_cache is None:
        outs = [model(x, timesteps(x, t, per_frame), ctx) for t in TIMESTEPS]
        return torch.stack(outs).float(), {}
    result = WanEngine(model, recipe, x.device).sample(sample_request(x, ctx))
    assert result.step_cache is not None
    return result.latent, {b.name: b.pattern for b in result.step_cache.branches}


def run_case(case: dict, world: int, device: str) -> dict:
    if any(a.kind == "compile" for a in VARIANTS[case["variant"]].accelerations):
        # each case its own compile cache: PyTorch bounds the graphs per code object, and one process runs many cases
        torch._dynamo.reset()
    model, recipe = variant_model(case, device, BuildEnv(torch.device(device), world, dist.group.WORLD))
    x, ctx = inputs(case, DTYPES[case["dtype"]], device)
    per_frame = VARIANTS[case["variant"]].per_frame
    ref, ref_schedule = run(model, recipe, x, ctx, per_frame)
    outs, schedules = {}, {"ref": ref_schedule}
    for overlap in (True, False):
        config = ParallelConfig(world, case["ulysses"], case["ring"], case["cfg_parallel"], overlap)
        enable_sequence_parallel(model, config)
        outs[overlap], schedules["overlap" if overlap else "plain"] = run(model, recipe, x, ctx, per_frame)
        disable_sequence_parallel(model)
    restored, schedules["restored"] = run(model, recipe, x, ctx, per_frame)
    variant = VARIANTS[case["variant"]]
    quant_shift = sparse_shift = None
    if variant.quantizes and variant.caches:  # what 8-bit rounding itself does to this run's latent
        unquantized = {**case, "variant": "teacache"}
        plain_model, plain_recipe = variant_model(unquantized, device, BuildEnv(torch.device(device)))
        quant_shift = rel_error(ref, run(plain_model, plain_recipe, x, ctx)[0])
    if variant.radial:  # what the mask itself does: the same model with dense attention
        dense_model, dense_recipe = variant_model({**case, "variant": "plain"}, device, BuildEnv(torch.device(device)))
        sparse_shift = rel_error(ref, run(dense_model, dense_recipe, x, ctx)[0])
    schedule = model.self_attention_schedule
    return {
        "ref_max": ref.abs().max().item(),
        "rel_overlap": rel_error(outs[True], ref),
        "rel_plain": rel_error(outs[False], ref),
        "rel_overlap_vs_plain": rel_error(outs[True], outs[False]),
        "quant_shift": quant_shift,
        "sparse_shift": sparse_shift,
        "ring_chunks": schedule.ring_chunks() if schedule is not None else None,
        "err_overlap": (outs[True] - ref).abs().max().item(),
        "err_plain": (outs[False] - ref).abs().max().item(),
        "overlap_vs_plain": (outs[True] - outs[False]).abs().max().item(),
        "restored_vs_ref": (restored - ref).abs().max().item(),
        "finite": bool(torch.isfinite(outs[True]).all() and torch.isfinite(outs[False]).all()),
        "schedules": schedules,
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
    per_tensor = QuantizeConfig(granularity="per-tensor").qconfig_dict()
    out["quantize_when_split"] = _error(lambda: quantize_dynamic(model, per_tensor))
    disable_sequence_parallel(model)
    quantize_dynamic(model, per_tensor)
    out["split_per_tensor"] = _error(lambda: enable_sequence_parallel(model, ParallelConfig(world, world)))
    cached = build_ours(SPEC, device, torch.float32, seed=0)
    TeacacheConfig(model="wan2.1-t2v-14b").apply(cached, BuildEnv(torch.device(device)))
    cfg_split = ParallelConfig(world, world // 2, cfg_parallel=True)
    out["cache_with_cfg_parallel"] = _error(lambda: enable_sequence_parallel(cached, cfg_split))
    split_first = build_ours(SPEC, device, torch.float32, seed=0)
    enable_sequence_parallel(split_first, cfg_split)  # the other order: the step cache comes second
    teacache = TeacacheConfig(model="wan2.1-t2v-14b")
    out["cfg_parallel_then_cache"] = _error(lambda: teacache.apply(split_first, BuildEnv(torch.device(device))))
    out["split_then_radial"] = _error(lambda: RADIAL.apply(split_first, BuildEnv(torch.device(device))))
    disable_sequence_parallel(split_first)
    no_lse = build_ours(SPEC, device, torch.float32, seed=0)
    RADIAL.apply(no_lse, BuildEnv(torch.device(device)))
    no_lse.self_attention_schedule.ring_kernel = None  # what a kernel without the log-sum-exp leaves
    out["radial_ring_without_lse"] = _error(lambda: enable_sequence_parallel(no_lse, ParallelConfig(world, 1, world)))
    if world == 4:  # two independent pairs, each running Ulysses on its own 2-rank group
        model = build_ours(SPEC, device, torch.float32, seed=0)
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        x, ctx = inputs({"latent": LATENT_45}, torch.float32, device)
        t = torch.full((x.shape[0],), 500.0, device=device)
        ref = model(x, t, ctx)
        enable_sequence_parallel(model, ParallelConfig(2, 2), group=pairs[dist.get_rank() // 2])
        out["pair_ulysses_err"] = (model(x, t, ctx) - ref).abs().max().item()
        disable_sequence_parallel(model)
    return out


TINY_FILE = {"dim": SPEC.dim, "num_layers": SPEC.num_layers, "num_heads": SPEC.num_heads, "ffn_dim": SPEC.ffn_dim,
             "text_dim": SPEC.text_dim, "freq_dim": SPEC.freq_dim}  # fmt: skip


def tiny_weights(folder: Path, seed: int) -> Path:
    return write_tiny_model(folder / f"tiny-seed{seed}.safetensors", seed=seed, dtype="fp32", **TINY_FILE)


def file_recipe(weights: Path, quantize: QuantizeConfig = INT8) -> Recipe:
    """What a worker group builds from the sampler's recipe: 8-bit linears and TeaCache on a weights file."""
    return Recipe(str(weights), compute_dtype="fp32").with_acceleration(quantize).with_acceleration(TEACACHE)


def build_checks(world: int, device: str, folder: Path) -> dict:
    """``build_engine`` as a worker group's rank runs it, each rank on weights of its own seed.

    Replicas that differ (on GPUs: in their last bits, from the kernels) must still take the same skip decisions,
    or the ranks would run different collectives and hang: the accelerations are given the process group, and
    every rank takes rank 0's decisions. A per-tensor quantization is refused before any weight is quantized.
    """
    weights = tiny_weights(folder, dist.get_rank())
    layout = ParallelConfig(world, 2, world // 2)  # Ulysses pairs; with 4 ranks, a ring of two pairs
    engine = build_engine(file_recipe(weights), torch.device(device), layout)
    x, ctx = inputs({"latent": LATENT_45}, torch.float32, device)
    report = engine.sample(sample_request(x, ctx)).step_cache
    assert report is not None
    disable_sequence_parallel(engine.model)
    per_tensor = file_recipe(weights, QuantizeConfig(granularity="per-tensor"))
    return {
        "schedule": {b.name: b.pattern for b in report.branches},
        "per_tensor": _error(lambda: build_engine(per_tensor, torch.device(device), layout)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # launch() asks a rank that overran where it stands
    logging.basicConfig(level=logging.INFO, format=f"rank {args.rank} %(asctime)s %(name)s: %(message)s")
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
            results = {}
            for name, case in cases.items():
                log.info("case %s", name)
                results[name] = run_case(case, args.world, args.device)
            log.info("checks")
            results["checks"] = checks(args.world, args.device)
            log.info("build checks")
            results["built"] = build_checks(args.world, args.device, args.out)
            log.info("done")
    finally:
        dist.destroy_process_group()
    (args.out / f"rank{args.rank}.json").write_text(json.dumps(results))


def _log_excerpt(rank: int, log_file: Path, stacks_from: int | None) -> str:
    """The end of a rank's log; for a rank that overran, the end of its log before, then where it stood (its
    threads' stacks, innermost frames first)."""
    text = log_file.read_bytes().decode(errors="replace")
    if stacks_from is None:
        return f"--- rank {rank}:\n{text[-4000:]}"
    return f"--- rank {rank}:\n{text[:stacks_from][-1500:]}\n--- rank {rank} stood at:\n{text[stacks_from:][:3000]}"


def launch(
    world: int, cases: dict, out: Path, device: str = "cpu", timeout_s: float = 360.0, script: str = __file__
) -> list[dict]:
    """Run ``cases`` on ``world`` worker processes of ``script`` (this one, or another with the same command line);
    every rank's results, or RuntimeError with the failed ranks' logs. A rank still running at ``timeout_s`` first
    writes every thread's Python stack to its log, then is killed. (About 25 s for 4 ranks on 2 CPU cores; the
    timeout leaves room for a slower, busier machine.)"""
    port = free_port()
    logs = [out / f"rank{r}.log" for r in range(world)]
    procs = []
    for rank in range(world):
        cmd = [sys.executable, script, "--rank", str(rank), "--world", str(world), "--port", str(port)]
        cmd += ["--cases", json.dumps(cases), "--out", str(out), "--device", device]
        procs.append(subprocess.Popen(cmd, stdout=logs[rank].open("w"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        overran = [p for p in procs if p.poll() is None]
        stacks_from = {r: logs[r].stat().st_size for r, p in enumerate(procs) if p in overran}
        for p in overran:
            p.send_signal(signal.SIGUSR1)
        time.sleep(2.0 if overran else 0.0)
        for p in overran:
            p.kill()
            p.wait()
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        why = f"ranks {sorted(stacks_from)} still ran after {timeout_s:.0f} s" if stacks_from else ""
        logs_text = "\n".join(_log_excerpt(r, logs[r], stacks_from.get(r)) for r in failed)
        raise RuntimeError(f"{world}-process run failed on ranks {failed}; {why}\n{logs_text}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    main()
