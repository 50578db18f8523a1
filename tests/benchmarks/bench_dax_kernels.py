"""DAX's fused kernels against what they replace, one kernel site at a time, at one model's shapes, in one run.

    python -m tests.benchmarks.bench_dax_kernels --case 14b-720p --out docs/benchmarks/dax_kernels_h200
    python -m tests.benchmarks.bench_dax_kernels --case tiny --device cpu --compile-backend aot_eager --out /tmp/k

Sites, as one 14B block runs them (per forward: 40 blocks; milliseconds per call, median of repeats):

- self- and cross-attention from the q/k/v projections: the norms (inductor's, as the compiled stack runs them; or the
  eager Triton kernels) then SageAttention2 preparing its own inputs, against ``sage_inputs="fused"`` (DAX's norm
  kernels writing the sm90 kernel's inputs); and the sm90 kernel alone on them (the floor of the site);
- the three norm sites quantizing their output for the 8-bit linears, GELU with ffn.2's quantization, the attention
  output's quantization: inductor's kernels (compiled PyTorch form) and the eager Triton kernels against the custom
  ops of ``input_kernels="dax"``.

Each row gives the bytes the site must move at least (one read of its inputs, one write of its outputs) and the
bandwidth that time means; ``saved_per_forward_s`` is (compiled - new) x calls per forward.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dax_core.attention import BackendUnavailable, bind_attention
from dax_core.models import ops
from dax_core.models.rope import rope_cos_sin
from dax_core.quant import kernel_ops
from dax_core.quant.numerics import quantize

from .common import CASES, TEXT_TOKENS, device_name, median, timed, write_json

log = logging.getLogger("bench_dax_kernels")
E4M3 = torch.float8_e4m3fn
EPS = 1e-6


def _time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    return median(timed(fn, reps, device, warmup=3))


class Sites:
    def __init__(self, case_name: str, device: torch.device, backend: str, reps: int) -> None:
        case = CASES[case_name]
        self.case, self.device, self.backend, self.reps = case, device, backend, reps
        spec = case.spec
        self.spec, self.tokens, self.h = spec, case.tokens, spec.num_heads
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        g = torch.Generator(device=device).manual_seed(0)

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, device=device) * scale).to(self.dtype)

        self.randn = randn
        self.rows: list[dict] = []

    def compile(self, fn):
        return torch.compile(fn, backend=self.backend, fullgraph=True, dynamic=False)

    def record(self, site: str, calls: int, traffic: int, variants: dict[str, Callable[[], object] | str]) -> None:
        """Time each variant (a callable, or the reason it cannot run here) of a site called ``calls`` times a
        forward that must move ``traffic`` bytes at least."""
        row: dict = {"site": site, "calls_per_forward": calls, "min_bytes": traffic, "ms": {}, "skipped": {}}
        for name, fn in variants.items():
            if isinstance(fn, str):
                row["skipped"][name] = fn
                continue
            try:
                seconds = _time(fn, self.device, self.reps)
            except Exception as err:  # a variant that fails here is reported, the others still run
                log.exception("%s / %s failed", site, name)
                row["skipped"][name] = f"{type(err).__name__}: {err}"
                continue
            row["ms"][name] = 1000 * seconds
        if "new" in row["ms"] and traffic:
            row["new_tb_s"] = traffic / (row["ms"]["new"] / 1000) / 1e12
        if "new" in row["ms"] and "compiled" in row["ms"]:
            row["saved_per_forward_s"] = (row["ms"]["compiled"] - row["ms"]["new"]) * calls / 1000
        log.info("%s: %s", site, {k: round(v, 3) for k, v in row["ms"].items()})
        self.rows.append(row)

    # -- attention from the projections --------------------------------------------------------------------------

    def attention(self) -> None:
        spec, s, h = self.spec, self.tokens, self.h
        try:
            default = bind_attention("sage", self.device, self.dtype)
            fused = bind_attention("sage", self.device, self.dtype, inputs="fused")
        except (BackendUnavailable, ValueError) as err:
            for site in ("self-attention from projections", "cross-attention from projections"):
                self.record(site, self.spec.num_layers, 0, {"compiled": str(err), "new": str(err)})
            return
        prepared = fused.prepared
        _, _, f, hh, ww = self.case.latent_shape
        pt, ph, pw = spec.patch_size
        rope = rope_cos_sin(spec, (f // pt, hh // ph, ww // pw), self.device)
        wq, wk = (1 + 0.1 * self.randn(spec.dim)), (1 + 0.1 * self.randn(spec.dim))
        for site, keys, use_rope in (("self-attention from projections", s, True),
                                     ("cross-attention from projections", TEXT_TOKENS, False)):  # fmt: skip
            xq, xk, xv = (
                self.randn(1, s, spec.dim, scale=2),
                self.randn(1, keys, spec.dim, scale=2),
                self.randn(1, keys, spec.dim),
            )
            r = rope if use_rope else None

            def old(xq=xq, xk=xk, xv=xv, r=r):
                if r is None:
                    q = ops.rms_norm(xq, wq, EPS).unflatten(-1, (h, -1))
                    k = ops.rms_norm(xk, wk, EPS).unflatten(-1, (h, -1))
                else:
                    q, k = ops.rms_norm_rope(xq, wq, *r, h, EPS), ops.rms_norm_rope(xk, wk, *r, h, EPS)
                return default(q, k, xv.unflatten(-1, (h, -1)))

            def new(xq=xq, xk=xk, xv=xv, r=r):
                return prepared.attend(prepared.query(xq, wq, r, h, EPS), prepared.key(xk, wk, r, h, EPS),
                                       prepared.value(xv, h))  # fmt: skip

            inputs = (prepared.query(xq, wq, r, h, EPS), prepared.key(xk, wk, r, h, EPS), prepared.value(xv, h))
            compiled_old = self.compile(old)
            self.record(site, spec.num_layers, 0, {  # compute-bound: no traffic figure
                "compiled": compiled_old, "eager": old, "new": new, "kernel_alone": lambda inputs=inputs:
                prepared.attend(*inputs),
                "new_query": lambda xq=xq, r=r: prepared.query(xq, wq, r, h, EPS),
                "new_key": lambda xk=xk, r=r: prepared.key(xk, wk, r, h, EPS),
                "new_value": lambda xv=xv: prepared.value(xv, h),
            })  # fmt: skip

    # -- the linears' input quantization --------------------------------------------------------------------------

    def input_quantization(self) -> None:
        spec, s, d = self.spec, self.tokens, self.spec.dim
        x, r = self.randn(1, s, d), self.randn(1, s, d)
        shift, scale, gate = (0.3 * torch.randn(1, 1, d, device=self.device) for _ in range(3))
        w, b = 1 + 0.1 * self.randn(d), 0.1 * self.randn(d)
        rows = s
        fused = None
        if self.device.type == "cuda":
            from dax_core.models import fused_ops, fused_quant

            fused = (fused_ops, fused_quant)

        def q_of(t):
            return quantize(t.reshape(-1, d), E4M3, per_row=True)

        sites = {
            "modulated LayerNorm + quantization (self-attention input)": (
                2 * x.numel() + rows * d + 4 * rows,  # bf16 in; fp8 and scales out
                lambda: q_of(ops.modulated_layer_norm(x, shift, scale, EPS)),
                (lambda: fused[0].modulated_layer_norm(x, shift, scale, EPS, E4M3)) if fused else None,
                lambda: kernel_ops.norm_quantize(x, None, None, shift, scale, EPS, False, E4M3),
            ),
            "gated residual + LayerNorm + quantization (cross-attention input)": (
                3 * 2 * x.numel() + rows * d + 4 * rows,  # x, y in, stream out; fp8 out
                lambda: (lambda st: (st, q_of(ops.affine_layer_norm(st, w, b, EPS))))(ops.gated_residual(x, r, gate)),
                (lambda: fused[0].gated_residual_layer_norm(x, r, gate, w, b, EPS, E4M3)) if fused else None,
                lambda: kernel_ops.norm_quantize(x, r, gate, w, b, EPS, True, E4M3),
            ),
            "residual + modulated LayerNorm + quantization (FFN input)": (
                3 * 2 * x.numel() + rows * d + 4 * rows,
                lambda: (lambda st: (st, q_of(ops.modulated_layer_norm(st, shift, scale, EPS))))(x + r),
                (lambda: fused[0].add_modulated_layer_norm(x, r, shift, scale, EPS, E4M3)) if fused else None,
                lambda: kernel_ops.norm_quantize(x, r, None, shift, scale, EPS, False, E4M3),
            ),
        }
        for site, (traffic, old, eager, new) in sites.items():
            variants = {"compiled": self.compile(old), "new": new}
            if eager is not None:
                variants["eager"] = eager
            self.record(site, spec.num_layers, traffic, variants)
        hidden = self.randn(rows, spec.ffn_dim, scale=0.5)
        eager_gelu = (lambda: fused[1].quantize_rows(hidden, E4M3, gelu=True)) if fused else None
        variants = {
            "compiled": self.compile(lambda: quantize(F.gelu(hidden, approximate="tanh"), E4M3, per_row=True)),
            "new": lambda: kernel_ops.quantize_rows(hidden, E4M3, True),
        }
        if eager_gelu is not None:
            variants["eager"] = eager_gelu
        self.record("GELU + quantization (ffn.2 input)", spec.num_layers, 3 * hidden.numel() + 4 * rows, variants)
        out = self.randn(rows, d)
        variants = {
            "compiled": self.compile(lambda: quantize(out, E4M3, per_row=True)),
            "new": lambda: kernel_ops.quantize_rows(out, E4M3, False),
        }
        if fused is not None:
            variants["eager"] = lambda: fused[1].quantize_rows(out, E4M3)
        self.record("row quantization (attention outputs: o input)", 2 * spec.num_layers, 3 * out.numel(), variants)


def markdown(results: dict) -> str:
    names = ("compiled", "eager", "new", "kernel_alone", "new_query", "new_key", "new_value")
    lines = [
        f"# DAX's fused kernels, site by site: {results['case']} on {results['device']}",
        "",
        f"Command: `{results['command']}` (torch {results['torch']}; median of {results['reps']} calls, ms per call).",
        "*compiled*: what the compiled full stack runs today (inductor's kernels; SageAttention2 preparing its own "
        'inputs); *eager*: the eager Triton kernels; *new*: DAX\'s kernels (`sage_inputs="fused"`, '
        '`input_kernels="dax"`); *kernel alone*: the sm90 attention kernel on prepared inputs. *TB/s*: the '
        "site's least traffic over *new*'s time (H200: 4.8 TB/s).",
        "",
        "| site | calls / forward | " + " | ".join(names) + " | new TB/s | saved per forward s |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in results["rows"]:
        cells = [f"{row['ms'][n]:.3f}" if n in row["ms"] else "—" for n in names]
        tbs = f"{row['new_tb_s']:.2f}" if "new_tb_s" in row else "—"
        saved = f"{row['saved_per_forward_s']:.3f}" if "saved_per_forward_s" in row else "—"
        lines.append(f"| {row['site']} | {row['calls_per_forward']} | " + " | ".join(cells) + f" | {tbs} | {saved} |")
    total = sum(r.get("saved_per_forward_s", 0.0) for r in results["rows"])
    lines += ["", f"Sum of the savings: {total:.3f} s per forward."]
    skipped = [(r["site"], n, why) for r in results["rows"] for n, why in r["skipped"].items()]
    if skipped:
        lines += ["", "Not run here:", *(f"- {site} / {n}: {why}" for site, n, why in skipped)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--case", default="14b-720p", choices=tuple(CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="path prefix of the .json and .md written")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    device = torch.device(args.device)
    sites = Sites(args.case, device, args.compile_backend, args.reps)
    with torch.inference_mode():
        sites.attention()
        sites.input_quantization()
    results = {
        "command": " ".join(["python -m tests.benchmarks.bench_dax_kernels", *map(shlex.quote, argv or sys.argv[1:])]),
        "case": sites.case.name, "device": device_name(device), "torch": torch.__version__, "reps": args.reps,
        "rows": sites.rows,
    }  # fmt: skip
    prefix = str(args.out).removesuffix(".json").removesuffix(".md")
    write_json(Path(prefix + ".json"), results)
    Path(prefix + ".md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
