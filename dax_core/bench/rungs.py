"""The speed ladder as data: each rung's accelerations (recipe dicts, as the nodes make them), the step schedules of
the step-cache and distilled rungs, and upstream DAX's published ladder they are set against."""

from __future__ import annotations

from dataclasses import dataclass

STEPS = 50
"""Denoising steps of a run, as upstream DAX's published ladder (and Wan2.1's default) counts them."""


@dataclass(frozen=True)
class DenseRung:
    """A rung that runs every step: ``adds`` to the rung named ``base`` (or to nothing, for the stock rung).

    ``in_place``: ``adds`` applies to the base rung's built model (compile, CUDA graphs), else the rung is built anew
    from the shared weights. A rung whose base was skipped builds on the nearest rung below it that ran.
    """

    key: str
    title: str
    adds: tuple[dict, ...]
    base: str | None = None
    in_place: bool = False
    side: bool = False  # an alternative to the rung above it, not a step up the ladder (INT8 for FP8)
    on_request: bool = False  # runs only when ``--rungs`` names it (A/B variants of the dense stack)


def dense_rungs(compile_backend: str = "inductor") -> tuple[DenseRung, ...]:
    compile_config = {"kind": "compile", "backend": compile_backend}
    return (
        DenseRung("stock", "stock: bf16, PyTorch SDPA, eager", ()),
        DenseRung("sage", "+ SageAttention2", ({"kind": "attention", "backend": "sage"},), "stock"),
        DenseRung("fp8", "+ FP8 linears (eager)", ({"kind": "quantize", "dtype": "fp8"},), "sage"),
        DenseRung("int8", "INT8 linears instead (eager)", ({"kind": "quantize", "dtype": "int8"},), "sage", side=True),
        DenseRung("compile", "+ compile", (compile_config,), "fp8", in_place=True),
        # CUDA graphs cannot record SageAttention2's CUDA kernels (they launch on CUDA's legacy stream): they get
        # their own pair, on PyTorch's SDPA (cuDNN on Hopper), compiled, without and with graphs
        DenseRung("compile_sdpa", "FP8 + compile, PyTorch SDPA (what a graph can hold)",
                  ({"kind": "quantize", "dtype": "fp8"}, compile_config), "stock"),
        DenseRung("graphs", "+ CUDA graphs", ({**compile_config, "cuda_graphs": True},), "compile_sdpa",
                  in_place=True),
        *ab_rungs(compile_config),
    )  # fmt: skip


def ab_rungs(compile_config: dict) -> tuple[DenseRung, ...]:
    """The dense stack built whole from the weights, with DAX's kernels or without (run on request, same run): the
    full stack as the ``compile`` rung has it; with SageAttention2's inputs written by DAX's norm kernels; with the
    8-bit linears' inputs quantized by DAX's kernels as custom ops; with both; and the eager stack without and with
    both."""
    fp8 = {"kind": "quantize", "dtype": "fp8", "input_kernels": "default"}
    fp8_dax = {"kind": "quantize", "dtype": "fp8", "input_kernels": "dax"}
    sage = {"kind": "attention", "backend": "sage", "sage_inputs": "sage"}
    sage_fused = {"kind": "attention", "backend": "sage", "sage_inputs": "fused"}
    variants = (
        ("full", "full stack: FP8 + SageAttention2 + compile", (fp8, sage, compile_config)),
        ("full_sage_inputs", "full stack, Sage inputs from DAX's norm kernels", (fp8, sage_fused, compile_config)),
        ("full_input_kernels", "full stack, 8-bit inputs from DAX's kernels", (fp8_dax, sage, compile_config)),
        ("full_dax", "full stack, both (DAX's kernels)", (fp8_dax, sage_fused, compile_config)),
        ("eager_full", "FP8 + SageAttention2, eager", (fp8, sage)),
        ("eager_dax", "FP8 + SageAttention2, eager, DAX's kernels", (fp8_dax, sage_fused)),
    )
    return tuple(DenseRung(k, t, adds, "stock", side=True, on_request=True) for k, t, adds in variants)


@dataclass(frozen=True)
class ScheduleRung:
    """A rung that changes which steps run (a step cache) or how many (a distilled model), on the best dense rung.

    ``cache``: "teacache" or "magcache" (the skipped step's cost is measured), or None; ``cfg``: whether each step
    runs both guidance branches; ``steps``: the run's steps. The pattern of computed ("C") and skipped ("S") steps is
    given: skip rates on random weights mean nothing.
    """

    key: str
    title: str
    cache: str | None
    steps: int
    cfg: bool
    assumption: str


TEACACHE_SKIPS = 20
"""Assumed TeaCache skips of 50 steps: about 40 %, typical of its published Wan2.1 thresholds (0.2, e0 mode)."""
TEACACHE_RETENTION = 5  # e0 mode computes the first 5 steps
MAGCACHE_SETTING = ("E012K2R02", 0.12, 2, 0.2)  # MagCache4Wan2.1's published setting: threshold, K, retention ratio
DISTILL_STEPS = 4

SCHEDULE_RUNGS = (
    ScheduleRung(
        "teacache", "+ TeaCache (assumed 40 % skips)", "teacache", STEPS, True,
        f"TeaCache skips {TEACACHE_SKIPS} of {STEPS} steps (about 40 %, typical of its published threshold 0.2 in e0 "
        "mode on real Wan2.1 weights: an assumption, not measured here), spread evenly after its 5 retention steps",
    ),
    ScheduleRung(
        "magcache", f"+ MagCache {MAGCACHE_SETTING[0]}", "magcache", STEPS, True,
        f"MagCache at its published setting {MAGCACHE_SETTING[0]} (threshold {MAGCACHE_SETTING[1]}, K "
        f"{MAGCACHE_SETTING[2]}, retention {MAGCACHE_SETTING[3]}): its decisions follow the model's calibrated ratios "
        "alone, so this is the schedule real weights take",
    ),
    ScheduleRung(
        "distill", f"{DISTILL_STEPS}-step distilled (cfg 1)", None, DISTILL_STEPS, False,
        f"a step- and CFG-distilled model (lightx2v-style LoRA merged into the weights: no run-time cost) sampled in "
        f"{DISTILL_STEPS} steps at cfg 1, one forward a step; its quality is the distillation's, not measured here",
    ),
)  # fmt: skip


def spread_skips(steps: int, skipped: int, first: int) -> str:
    """A pattern of ``steps`` letters: the first ``first`` and the last computed, ``skipped`` skips spread evenly over
    the steps between (no two together while they fit)."""
    window = steps - first - 1
    if not 0 <= skipped <= window:
        raise ValueError(f"cannot skip {skipped} of the {window} steps between step {first} and the last")
    letters = ["C"] * steps
    for j in range(skipped):
        letters[first + (2 * j + 1) * window // (2 * skipped)] = "S"
    return "".join(letters)


@dataclass(frozen=True)
class UpstreamRung:
    title: str
    gpus: int
    seconds: float
    ours: str | None  # the rung of this ladder nearest to it (None: no one-GPU counterpart)


UPSTREAM_SOURCE = "upstream DAX's published ladder: Wan2.1-T2V-14B, 1280x720, 81 frames, 50 steps, NVIDIA H20 GPUs"
UPSTREAM_RUNGS = (
    UpstreamRung("1 GPU", 1, 6836, "stock"),
    UpstreamRung("8 GPUs, sequence parallel", 8, 925, None),
    UpstreamRung("+ SageAttention", 8, 474, "sage"),
    UpstreamRung("+ compile", 8, 448, None),
    UpstreamRung("+ communication overlap", 8, 432, None),
    UpstreamRung("+ INT8 linears (all dense levers)", 8, 357, "compile"),
    UpstreamRung("+ TeaCache", 8, 188, "teacache"),
)
HARDWARE_NOTE = (
    "H20 (upstream): 148 TFLOP/s dense bf16, 296 dense FP8/INT8, 4.0 TB/s (NVIDIA datasheet), 8 GPUs from the second "
    "rung on. This ladder: one GPU, whose GEMM and attention ceilings are measured in the same run (table above)."
)
