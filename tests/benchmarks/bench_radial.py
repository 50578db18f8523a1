"""Radial attention on one GPU: the block-sparse kernels against dense SageAttention2, the fidelity of the mask,
and whole 14B 720p forwards with the full stack (FP8 linears + SageAttention2 + compile), dense against radial.

    python -m tests.benchmarks.bench_radial --out radial_h200.json --md radial_h200.md           # ~5 min, H200
    python -m tests.benchmarks.bench_radial --quick --out radial_h200.json --md radial_h200.md   # ~2 min
    python -m tests.benchmarks.bench_radial --device cpu --case tiny --block 16 --dense-backend sdpa \\
        --kernels reference --compile-backend aot_eager                                        # CPU smoke test

Stages, in this order (``--stages`` picks some), each writing the JSON (and the Markdown) when it ends, so a run cut
short keeps what it measured; a stage that fails records its error and the next one runs:

- ``masks``: the Radial mask's density at each case's grid (blocks of ``--block`` tokens) and its build time;
- ``attention``: one self-attention call at each case's shape (B1, the model's heads, all its tokens, D128), median
  of ``--reps`` after ``--warmup``: dense SageAttention2 (the baseline) and cuDNN SDPA; each block-sparse kernel
  with the Radial mask, a full mask and random block masks of 50 / 30 / 15 % (row-balanced, diagonal kept);
- ``fidelity``: on sampled query rows and heads, against exact dense attention (float32): the mask's own error
  (exact attention restricted to the mask), each kernel's error, dense SageAttention2's, and the share of the
  softmax mass the mask keeps; for random q/k (RMS-normalised, no structure: a pessimistic bound) and for
  synthetic q/k whose attention decays with spatiotemporal distance (a Gaussian 1 frame x 3 patches wide, and a
  wider one, 2 x 6), where the mask should lose little. Real Wan weights are not measured here;
- ``forward``: the first case's whole forward (one CFG branch) with the full stack, dense then radial (the first
  layer dense, as at every step after the dense ones), the first call (compilation) and the median; the projected
  50-step time with the published schedule (12 dense steps, CFG batched: each step two forwards' work); the 4-step
  distilled run (cfg 1, one dense step: the published LightX2V setting) measured step by step.

Step times do not depend on weight values; how close radial attention stays to dense attention on real Wan weights
does, and is not measured.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.attention import BackendUnavailable, bind_attention
from dax_core.attention.block_sparse import BoundBlockSparse, bind_block_sparse
from dax_core.attention.block_table import BlockTable
from dax_core.attention.radial_config import RadialConfig
from dax_core.attention.radial_mask import radial_block_table
from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe

from .common import CASES, Case, build_ours, device_name, median, timed, write_json

log = logging.getLogger("bench_radial")

# head_dim 128 as Wan's (the q/k builders and the kernels assume it): 9 frames of 4 x 4 patches
CASES_HERE = {**CASES, "tiny": Case("tiny (smoke test)", WanSpec(256, 2, 2, 256, text_dim=32), 64, 64, 33)}
STAGES = ("masks", "attention", "fidelity", "forward")
RANDOM_DENSITIES = (0.5, 0.3, 0.15)
STEPS, DENSE_STEPS = 50, 12  # the published Wan2.1 14B schedule
DISTILL_STEPS, DISTILL_DENSE_STEPS = 4, 1  # the published LightX2V 4-step setting
TARGETS = {"radial_forward_s": 5.0, "distill_run_s": 25.0}
HEAD_DIM = 128


def grid_of(case: Case) -> tuple[int, int, int]:
    _, _, f, h, w = case.latent_shape
    pt, ph, pw = case.spec.patch_size
    return (f // pt, h // ph, w // pw)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_qkv(heads: int, tokens: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """q, k, v [1, S, H, 128]: RMS-normalised rows as Wan's norm_q/norm_k give, a shared offset in k (what
    SageAttention smooths away), q scaled so softmax is peaked (logit std ~3); no spatial structure."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (1, tokens, heads, HEAD_DIM)
    q = torch.randn(shape, generator=g, device=device)
    k = torch.randn(shape, generator=g, device=device)
    k = k + 1.5 * torch.randn(1, 1, heads, HEAD_DIM, generator=g, device=device)
    v = torch.randn(shape, generator=g, device=device)
    q = q / q.pow(2).mean(-1, keepdim=True).sqrt() * 3.0
    k = k / k.pow(2).mean(-1, keepdim=True).sqrt()
    return q.to(dtype), k.to(dtype), v.to(dtype)


DECAYS = {"decay narrow": (1.0, 3.0), "decay wide": (2.0, 6.0)}
"""Synthetic decays: the Gaussian's width in frames and in patches."""


def decay_qkv(grid, heads: int, widths: tuple[float, float], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """q, k, v whose attention falls with spatiotemporal distance: with p = (frame / sigma_t, row / sigma_s,
    column / sigma_s) centred on the video, q_i = sqrt(D) (p_i, 1) and k_j = (p_j, -|p_j|^2 / 2), so the scaled
    logit q_i.k_j / sqrt(D) = -|p_i - p_j|^2 / 2 + (a constant per query): softmax weights exp(-|p_i - p_j|^2 / 2),
    a Gaussian of widths (sigma_t, sigma_s), the same for every head; plus noise (10 % of each part)."""
    f, h, w = grid
    tokens = f * h * w
    sigma_t, sigma_s = widths
    g = torch.Generator(device=device).manual_seed(seed)
    n = torch.arange(tokens, device=device, dtype=torch.float64)
    frame, row, col = n // (h * w), (n // w) % h, n % w
    p = torch.stack(((frame - (f - 1) / 2) / sigma_t, (row - (h - 1) / 2) / sigma_s, (col - (w - 1) / 2) / sigma_s), -1)
    q = torch.zeros(1, tokens, heads, HEAD_DIM, device=device, dtype=torch.float64)
    k = torch.zeros_like(q)
    q[0, :, :, :3], q[0, :, :, 3] = HEAD_DIM**0.5 * p[:, None], HEAD_DIM**0.5
    k[0, :, :, :3], k[0, :, :, 3] = p[:, None], -0.5 * p.pow(2).sum(-1)[:, None]
    noise = (torch.randn(q.shape, generator=g, device=device, dtype=torch.float64) for _ in range(2))
    q, k = q + 0.1 * HEAD_DIM**0.5 * next(noise), k + 0.1 * next(noise)
    v = torch.randn(1, tokens, heads, HEAD_DIM, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_table(tokens: int, block: int, density: float, device: torch.device, seed: int = 0) -> BlockTable:
    """Row-balanced random blocks: each query block computes round(density x blocks) key blocks, its diagonal one
    included."""
    blocks = math.ceil(tokens / block)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(blocks, blocks, generator=g)
    scores.fill_diagonal_(2.0)
    keep = max(1, round(density * blocks))
    table = torch.zeros(blocks, blocks, dtype=torch.bool)
    table.scatter_(1, scores.topk(keep, dim=1).indices, True)
    return BlockTable.of(table, tokens, block, device)


def full_table(tokens: int, block: int, device: torch.device) -> BlockTable:
    blocks = math.ceil(tokens / block)
    return BlockTable.of(torch.ones(blocks, blocks, dtype=torch.bool), tokens, block, device)


def sparse_call(kernel: BoundBlockSparse, table: BlockTable, q, k, v) -> Callable[[], torch.Tensor]:
    window = table.window(0, q.shape[1], 0, k.shape[1])
    return lambda: kernel.run(q, k, v, window, table.block, None)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.results: dict = {
            "device": device_name() if self.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "command": "python -m tests.benchmarks.bench_radial " + " ".join(args.argv),
            "block": args.block,
            "kernels": {},
            "stages": {},
        }

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def save(self) -> None:
        if self.args.out:
            write_json(self.args.out, self.results)
        if self.args.md:
            self.args.md.parent.mkdir(parents=True, exist_ok=True)
            self.args.md.write_text(markdown(self.results))

    def timed_ms(self, fn: Callable[[], object]) -> tuple[float, list[float]]:
        times = timed(fn, self.args.reps, self.device, warmup=self.args.warmup)
        return median(times) * 1e3, [t * 1e3 for t in times]

    @functools.cached_property
    def kernels(self) -> dict[str, BoundBlockSparse]:
        """The block-sparse kernels asked for that bind here (bound once: FlexAttention compiles once per shape);
        the others are recorded with the reason."""
        bound = {}
        for name in self.args.kernels:
            try:
                bound[name] = bind_block_sparse(name, self.device, self.dtype, self.args.block)
                self.results["kernels"][name] = bound[name].kernel
            except (BackendUnavailable, ValueError) as err:
                self.results["kernels"][name] = f"unavailable: {err}"
        return bound

    @functools.cached_property
    def dense(self) -> dict:
        """Dense baselines that bind here: the chosen backend first (SageAttention2), then cuDNN SDPA."""
        out = {}
        for name in dict.fromkeys((self.args.dense_backend, "sdpa_cudnn")):
            try:
                out[name] = bind_attention(name, self.device, self.dtype)
            except (BackendUnavailable, ValueError) as err:
                self.results["kernels"][f"dense {name}"] = f"unavailable: {err}"
        return out

    # -- stages ----------------------------------------------------------------------------------------------

    def masks(self) -> dict:
        out = {}
        for key in self.args.case:
            grid = grid_of(CASES_HERE[key])
            start = time.perf_counter()
            table = radial_block_table(grid, 0.2, self.args.block, self.device)
            sync(self.device)
            out[key] = {"grid": list(grid), "tokens": table.tokens, "blocks": table.blocks,
                        "density": table.density, "build_s": time.perf_counter() - start}  # fmt: skip
        return out

    def attention(self) -> dict:
        out: dict = {}
        kernels, dense = self.kernels, self.dense
        densities = () if self.args.quick else RANDOM_DENSITIES
        for key in self.args.case:
            case = CASES_HERE[key]
            heads, tokens = case.spec.num_heads, case.tokens
            q, k, v = random_qkv(heads, tokens, self.device, self.dtype)
            flops = 4 * tokens * tokens * HEAD_DIM * heads
            rows: dict = {}
            out[key] = {"heads": heads, "tokens": tokens, "rows": rows}
            for name, attn in dense.items():
                ms, times = self.timed_ms(lambda attn=attn, q=q, k=k, v=v: attn(q, k, v))
                rows[f"dense {name}"] = {"kernel": attn.kernel, "density": 1.0, "ms": ms, "times_ms": times}
            tables = {"radial": radial_block_table(grid_of(case), 0.2, self.args.block, self.device),
                      "full": full_table(tokens, self.args.block, self.device)}  # fmt: skip
            for p in densities:
                tables[f"random {p:.2f}"] = random_table(tokens, self.args.block, p, self.device)
            for name, kernel in kernels.items():
                start = time.perf_counter()
                sparse_call(kernel, tables["full"], q, k, v)()  # first call: compiles FlexAttention
                sync(self.device)
                first = time.perf_counter() - start
                for mask, table in tables.items():
                    ms, times = self.timed_ms(sparse_call(kernel, table, q, k, v))
                    rows[f"{name} {mask}"] = {"kernel": kernel.kernel, "density": table.density, "ms": ms,
                                              "times_ms": times, "first_call_s": first}  # fmt: skip
                self.save_partial("attention", out)
            baseline = rows.get(f"dense {self.args.dense_backend}")
            for row in rows.values():
                row["dense_equivalent_tflops"] = flops / (row["ms"] * 1e-3) / 1e12
                if baseline is not None:
                    row["vs_dense"] = row["ms"] / baseline["ms"]
            del q, k, v
            self.free()
        return out

    def fidelity(self) -> dict:
        out: dict = {}
        kernels, dense = self.kernels, self.dense
        baseline = dense.get(self.args.dense_backend)
        for key in self.args.case[:1] if self.args.quick else self.args.case:
            case = CASES_HERE[key]
            grid = grid_of(case)
            table = radial_block_table(grid, 0.2, self.args.block, self.device)
            out[key] = {}
            for inputs in ("random", *DECAYS):
                if inputs == "random":
                    q, k, v = random_qkv(case.spec.num_heads, case.tokens, self.device, self.dtype, seed=1)
                else:
                    q, k, v = decay_qkv(grid, case.spec.num_heads, DECAYS[inputs], self.device, self.dtype, seed=1)
                outputs = {name: sparse_call(kernel, table, q, k, v)() for name, kernel in kernels.items()}
                if baseline is not None:
                    outputs[f"dense {self.args.dense_backend}"] = baseline(q, k, v)
                out[key][inputs] = sampled_errors(q, k, v, table, outputs, self.args.sample_rows)
                del q, k, v, outputs
                self.free()
        return out

    def forward(self) -> dict:
        key = self.args.case[0]
        case = CASES_HERE[key]
        kernel = self.args.forward_kernel
        accelerations = [{"kind": "quantize"}, {"kind": "attention", "backend": self.args.dense_backend},
                         {"kind": "compile", "backend": self.args.compile_backend}]  # fmt: skip
        out: dict = {"case": case.name, "accelerations": accelerations, "radial_kernel": kernel}
        model = build_ours(case.spec, str(self.device), self.dtype, seed=0)
        apply_accelerations(model, Recipe.from_dict({"weights": "random", "accelerations": accelerations}),
                            BuildEnv(self.device))  # fmt: skip
        g = torch.Generator(device=self.device).manual_seed(1)
        x = torch.randn(case.latent_shape, generator=g, device=self.device)
        t = torch.tensor([700.0], device=self.device)
        ctx = torch.randn(1, 512, case.spec.text_dim, generator=g, device=self.device).to(self.dtype)
        reps = 1 if self.args.quick else self.args.forward_reps

        def measure(name: str) -> torch.Tensor:
            outputs = []
            (first,) = timed(lambda: outputs.append(model(x, t, ctx).float()), 1, self.device)
            times = timed(lambda: model(x, t, ctx), reps, self.device)
            out[name] = {"first_call_s": first, "s": median(times), "times_s": times}
            log.info("%s forward: %.3f s (first call %.1f s)", name, median(times), first)
            self.save_partial("forward", out)
            return outputs[0]

        with torch.inference_mode():
            dense_out = measure("dense")
            RadialConfig(kernel=kernel, block_size=self.args.block).apply(model, BuildEnv(self.device))
            radial_out = measure("radial")
            out["radial_vs_dense_rel_diff"] = ((radial_out - dense_out).norm() / dense_out.norm()).item()
            del radial_out, dense_out
            t_dense, t_radial = out["dense"]["s"], out["radial"]["s"]
            out["density"] = model.self_attention_schedule.attention_for(grid_of(case)).density
            # CFG batched: a step runs both branches in one forward of batch 2, about twice one branch's time
            out["projected_50_steps_s"] = {
                "dense": 2 * STEPS * t_dense,
                "radial": 2 * (DENSE_STEPS * t_dense + (STEPS - DENSE_STEPS) * t_radial),
            }
            out["projected_50_steps_s"]["speedup"] = (
                out["projected_50_steps_s"]["dense"] / out["projected_50_steps_s"]["radial"]
            )
            out["projected_distill_s"] = (
                DISTILL_DENSE_STEPS * t_dense + (DISTILL_STEPS - DISTILL_DENSE_STEPS) * t_radial
            )
            self.save_partial("forward", out)
            if not self.args.quick:  # the 4-step run, step by step: one dense step, then radial
                schedule = model.self_attention_schedule
                # the published distilled setting on the same schedule object: its mask and compiled graphs are
                # those of the forwards above (a new model would compile them in its first run, as these did)
                schedule.dense_steps = DISTILL_DENSE_STEPS
                schedule.start_run(DISTILL_STEPS)
                steps = []
                for i in range(DISTILL_STEPS):
                    schedule.start_step(i)
                    steps.extend(timed(lambda: model(x, t, ctx), 1, self.device))
                report = schedule.end_run()
                out["distill"] = {"steps_s": steps, "run_s": sum(steps), "densities": list(report.densities)}
        distill_s = out.get("distill", {}).get("run_s", out["projected_distill_s"])
        out["meets_targets"] = {
            "radial_forward_s": out["radial"]["s"] <= TARGETS["radial_forward_s"],
            "distill_run_s": distill_s <= TARGETS["distill_run_s"],
        }
        return out  # the model is freed when the stage ends

    # -- running ---------------------------------------------------------------------------------------------

    def save_partial(self, stage: str, result: dict) -> None:
        self.results["stages"][stage] = result
        self.save()

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self) -> dict:
        for stage in self.args.stages:
            log.info("stage %s", stage)
            start = time.perf_counter()
            try:
                result = getattr(self, stage)()
            except Exception as err:  # keep what the other stages measure; the error is in the results
                log.exception("stage %s failed", stage)
                result = {**self.results["stages"].get(stage, {}), "error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
            result["stage_s"] = time.perf_counter() - start
            self.results["stages"][stage] = result
            self.save()
            self.free()
        return self.results


def sampled_errors(q, k, v, table: BlockTable, outputs: dict[str, torch.Tensor], rows: int) -> dict:
    """Errors on ``rows`` query rows spread over the video and at most 4 heads, against exact dense attention in
    float32: the mask's own (exact attention restricted to the computed blocks), each output's, and the share of
    the dense softmax mass inside the mask."""
    tokens, heads = q.shape[1], q.shape[2]
    g = torch.Generator().manual_seed(2)
    idx = torch.randperm(tokens, generator=g)[:rows].sort().values.to(q.device)
    hs = torch.arange(min(4, heads), device=q.device) * max(1, heads // 4)
    qs = q[0, idx][:, hs].float().transpose(0, 1)  # [h, R, D]
    ks, vs = (x[0][:, hs].float().transpose(0, 1) for x in (k, v))  # [h, S, D]
    logits = (qs @ ks.transpose(1, 2)) * q.shape[-1] ** -0.5
    p = torch.softmax(logits, dim=-1)
    exact = p @ vs
    mask = table.table[idx // table.block].repeat_interleave(table.block, 1)[:, :tokens]  # [R, S]
    masked = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1) @ vs
    inside = (p * mask).sum(-1).mean().item()
    del logits, p

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    result = {"mask_vs_dense": rel(masked, exact), "softmax_mass_in_mask": inside, "rows": rows, "heads": len(hs)}
    for name, out in outputs.items():
        got = out[0, idx][:, hs].float().transpose(0, 1)
        result[f"{name} vs dense"] = rel(got, exact)
        result[f"{name} vs masked"] = rel(got, masked)
    return result


# -- Markdown ------------------------------------------------------------------------------------------------


def _f(x, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(r: dict) -> str:
    lines = [f"# Radial attention on {r['device']}", "", f"torch {r['torch']}; command: `{r['command']}`", ""]
    lines += ["Kernels: " + "; ".join(f"{k}: {v}" for k, v in r["kernels"].items()), ""]
    stages = r["stages"]
    lines += [f"**{name} failed**: {res['error']}\n" for name, res in stages.items() if "error" in res]
    masks = {k: m for k, m in stages.get("masks", {}).items() if isinstance(m, dict) and "density" in m}
    if masks:
        rows = [[k, str(m["grid"]), str(m["tokens"]), str(m["blocks"]), f"{m['density']:.3f}", f"{m['build_s']:.2f}"]
                for k, m in masks.items()]  # fmt: skip
        lines += ["## Radial mask density (block-aligned)", ""]
        lines += [*_table(["case", "grid", "tokens", "blocks", "density", "build s"], rows), ""]
    attention = {k: a for k, a in stages.get("attention", {}).items() if isinstance(a, dict) and "rows" in a}
    if attention:
        rows = [[f"{key} (H{a['heads']} S{a['tokens']})", name, f"{row['density']:.3f}", f"{row['ms']:.1f}",
                 _f(row.get("vs_dense")), _f(row.get("dense_equivalent_tflops"), ".0f")]
                for key, a in attention.items() for name, row in a["rows"].items()]  # fmt: skip
        lines += ["## One self-attention call (B1, D128, bf16 in)", ""]
        header = ["case", "kernel / mask", "density", "ms", "vs dense baseline", "dense-equiv. TFLOP/s"]
        lines += [*_table(header, rows), ""]
    fidelity = [(key, inputs, f) for key, by in stages.get("fidelity", {}).items() if isinstance(by, dict)
                for inputs, f in by.items() if isinstance(f, dict)]  # fmt: skip
    if fidelity:
        lines += ["## Fidelity against exact dense attention (sampled rows, relative Frobenius error)", ""]
        for key, inputs, f in fidelity:
            outputs = ", ".join(f"{n} {v:.4f}" for n, v in f.items() if n.endswith(" vs dense"))
            lines.append(f"- {key}, {inputs} q/k: the mask alone {f['mask_vs_dense']:.4f}, softmax mass kept "
                         f"{f['softmax_mass_in_mask']:.4f}; {outputs}")  # fmt: skip
        lines.append("")
    fw = stages.get("forward", {})
    if "dense" in fw:
        rows = [[name, f"{fw[name]['first_call_s']:.1f}", f"{fw[name]['s']:.3f}"] for name in ("dense", "radial")
                if name in fw]  # fmt: skip
        lines += [f"## Whole forward, {fw['case']} (one CFG branch), full stack", ""]
        lines += [*_table(["attention", "first call s", "s"], rows), ""]
    if "projected_50_steps_s" in fw:
        p = fw["projected_50_steps_s"]
        text = (f"Radial density {fw['density']:.3f}; output vs dense (random weights) "
                f"{fw['radial_vs_dense_rel_diff']:.4f}. Projected 50 steps (12 dense, CFG batched): dense "
                f"{p['dense']:.0f} s, radial {p['radial']:.0f} s ({p['speedup']:.2f}x). 4-step distilled run "
                f"(1 dense step): projected {fw['projected_distill_s']:.1f} s")  # fmt: skip
        if "distill" in fw:
            text += f", measured {fw['distill']['run_s']:.1f} s"
        lines += [text + f". Targets met: {fw.get('meets_targets')}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES_HERE), help="default: 14b-720p, 1.3b-480p")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kernels", nargs="+", default=["sparge", "flex"])
    parser.add_argument("--dense-backend", default="sage")
    parser.add_argument("--forward-kernel", default="auto")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--forward-reps", type=int, default=2)
    parser.add_argument("--sample-rows", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="14B only, sparge only, fewer reps, no 4-step run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.case = args.case or ["14b-720p", "1.3b-480p"]
    if args.quick:
        args.case, args.kernels, args.reps, args.warmup = args.case[:1], args.kernels[:1], 3, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark times GPU kernels (smoke test: see --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return Bench(args).run()


if __name__ == "__main__":
    main()
