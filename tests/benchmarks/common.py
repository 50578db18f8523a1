"""Shared pieces of the GPU benchmarks: the engine's benchmark cases, builders and timing (``dax_core.bench``), the
named cases these scripts take, and the H100 kernel ceilings of the older FLOP floor."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dax_core.bench.cases import TEXT_TOKENS, TINY, Case
from dax_core.bench.timing import device_name, median, sync, timed, write_json
from dax_core.bench.weights import build_diffusers, build_model, fill_seeded_
from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B, WanSpec
from dax_core.models.wan import WanModel

__all__ = [
    "CASES", "TEXT_TOKENS", "TINY", "Case", "attention_inputs", "build_diffusers", "build_ours", "cuda_time",
    "device_name", "exact_attention", "fill_seeded_", "floor_seconds", "median", "sync", "timed", "write_json",
]  # fmt: skip

# Kernel ceilings measured on the H100 (bf16 GEMM, cuDNN SDPA), TFLOP/s: the FLOP floor of bench_forward uses them.
# The ladder (python -m dax_core bench) measures its own ceilings in the same run instead.
GEMM_BF16_TFLOPS = 739.0
ATTN_CUDNN_TFLOPS = 577.0

CASES = {
    "14b-720p": Case("Wan2.1-T2V-14B 1280x720x81", WAN21_T2V_14B, 1280, 720, 81),
    "1.3b-480p": Case("Wan2.1-T2V-1.3B 832x480x81", WAN21_T2V_1_3B, 832, 480, 81),
    "14b-480p": Case("Wan2.1-T2V-14B 832x480x81", WAN21_T2V_14B, 832, 480, 81),
    "tiny": Case("tiny (smoke test)", TINY, 64, 64, 9),
}


def floor_seconds(case: Case) -> float:
    """One forward at the H100's bf16 GEMM and cuDNN attention rates."""
    fl = case.flops()
    attention = fl["self_attention"] + fl["cross_attention"]
    return fl["linear"] / (GEMM_BF16_TFLOPS * 1e12) + attention / (ATTN_CUDNN_TFLOPS * 1e12)


def build_ours(spec: WanSpec, device: str, dtype: torch.dtype, seed: int) -> WanModel:
    return build_model(spec, device, dtype, seed)


def attention_inputs(sq: int, sk: int, heads: int, seed: int, layout: str = "NHD", head_dim: int = 128):
    """Seeded bf16 q, k, v on the GPU ([1, S, H, D] for NHD, [1, H, S, D] for HND), k offset by 0.5 so that
    SageAttention's smoothing of K has a mean to take out."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, sq, heads, head_dim, generator=g, device="cuda").bfloat16()
    k = (torch.randn(1, sk, heads, head_dim, generator=g, device="cuda") + 0.5).bfloat16()
    v = torch.randn(1, sk, heads, head_dim, generator=g, device="cuda").bfloat16()
    if layout == "HND":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return q, k, v


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "NHD") -> torch.Tensor:
    """Attention in float32 of the same q, k, v, in their layout."""
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out if layout == "HND" else out.transpose(1, 2)


def cuda_time(fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
    return timed(fn, reps, torch.device("cuda", torch.cuda.current_device()), warmup)


def run_kernel_bench(
    module: str,
    description: str,
    measure: Callable[..., list[dict]],
    markdown: Callable[[dict], str],
    argv: list[str] | None,
    filters: dict[str, str] | None = None,
) -> dict:
    """The command line of a one-GPU kernel benchmark: ``--reps`` (median of), ``--out PREFIX`` (JSON and Markdown),
    and each of ``filters`` (option name: help) as a repeatable ``--NAME`` string; ``measure(reps, **filters)``
    gives the rows (each filter a tuple of the strings given), ``markdown(result)`` the table."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path)
    for name, text in (filters or {}).items():
        p.add_argument(f"--{name}", action="append", default=[], help=text)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with torch.inference_mode():
        rows = measure(args.reps, **{name: tuple(getattr(args, name)) for name in filters or {}})
    result = {"device": device_name(torch.device("cuda")), "torch": torch.__version__, "reps": args.reps,
              "command": f"python -m {module} " + shlex.join(argv or sys.argv[1:]), "rows": rows}  # fmt: skip
    if args.out:
        write_json(args.out.with_suffix(".json"), result)
        args.out.with_suffix(".md").write_text(markdown(result))
    return result
