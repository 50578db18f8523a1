"""``sage``: SageAttention (int8 Q·K, low-precision P·V), the kernel chosen by the GPU.

SageAttention2's CUDA kernels when that build is installed:
  - compute capability 9.0 (Hopper): ``sageattn_qk_int8_pv_fp8_cuda_sm90`` (fp8 P·V, "fp32+fp32" accumulation),
  - 8.9 and 12.x (Ada, Blackwell consumer): ``sageattn_qk_int8_pv_fp8_cuda`` (fp8 P·V),
  - 8.0 / 8.6 / 8.7 (Ampere): ``sageattn_qk_int8_pv_fp16_cuda`` (fp16 P·V);
else the Triton kernels of SageAttention 1.x from PyPI (``sageattention==1.0.6``: ``sageattn``), which quantize
Q and K per block and offer no options and no log-sum-exp. Which one runs is fixed when the backend is bound
and said in the log. Every call is one custom op, so torch.compile does not trace into the package.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

import torch

from .custom_op import attention_op, no_lse
from .registry import AttentionBackend, BackendUnavailable, BoundAttention, check_qkv, register
from .sdpa import HALF_DTYPES, lse_bhs

INSTALL_HINT = (
    "build SageAttention2 from its sources (thu-ml/SageAttention: `pip install . --no-build-isolation` on the GPU "
    "machine) for the CUDA kernels, or `pip install sageattention==1.0.6` for the slower Triton kernels"
)
QK_QUANT = ("auto", "per_thread", "per_warp")
PV_ACCUM = ("auto", "fp32+fp32", "fp32+fp16", "fp32", "fp16+fp32", "fp16")
INPUTS = ("sage", "fused", "auto")  # who prepares the kernel's int8 / fp8 inputs: SageAttention, DAX's norm kernels,
# or DAX's where they can feed the kernel bound (the sm90 kernel, per-thread Q/K, fp32+fp32 P·V), else SageAttention
OPTIONS = {"qk_quant_gran": QK_QUANT, "pv_accum_dtype": PV_ACCUM, "inputs": INPUTS}


@dataclass(frozen=True)
class SageKernel:
    """One SageAttention entry point: the function in the ``sageattention`` package and what it accepts."""

    key: str
    function: str
    enabled_flag: str  # the flag in sageattention.core telling whether its compiled module loaded
    pv_accum: tuple[str, ...]  # the first is what SageAttention's own ``sageattn`` picks
    description: str


CUDA_KERNELS = {
    "sm90": SageKernel(
        "sm90", "sageattn_qk_int8_pv_fp8_cuda_sm90", "SM90_ENABLED", ("fp32+fp32",), "SageAttention2 sm90 CUDA kernel"
    ),
    "sm89": SageKernel(
        "sm89", "sageattn_qk_int8_pv_fp8_cuda", "SM89_ENABLED", ("fp32+fp16", "fp32+fp32", "fp32"),
        "SageAttention2 sm89 CUDA kernel",
    ),
    "sm80": SageKernel(
        "sm80", "sageattn_qk_int8_pv_fp16_cuda", "SM80_ENABLED", ("fp32", "fp16+fp32", "fp16"),
        "SageAttention2 sm80 CUDA kernel",
    ),
}  # fmt: skip


@functools.cache
def _package() -> ModuleType | str:
    try:
        return importlib.import_module("sageattention")
    except ImportError as err:
        return "sageattention is not installed" if err.name == "sageattention" else f"sageattention: {err}"
    except Exception as err:  # a build for another torch/CUDA fails with OSError and friends
        return f"sageattention failed to import: {err}"


def flavour() -> str | None:
    """ "cuda" (SageAttention2 with at least one compiled kernel), "triton" (SageAttention 1.x) or None."""
    package = _package()
    if isinstance(package, str):
        return None
    if hasattr(package, "sageattn_qk_int8_pv_fp16_cuda"):
        core = importlib.import_module("sageattention.core")
        return "cuda" if any(getattr(core, k.enabled_flag, False) for k in CUDA_KERNELS.values()) else None
    return "triton" if hasattr(package, "sageattn") else None


def _check() -> str | None:
    package = _package()
    if isinstance(package, str):
        return f"{package}: {INSTALL_HINT}"
    if flavour() is None:
        return (
            "sageattention is installed but none of its CUDA kernels loaded (sageattention.core reports "
            "SM80/SM89/SM90 disabled); rebuild SageAttention2 on this GPU machine with its CUDA toolkit"
        )
    return None


def _kernel_for(capability: tuple[int, int]) -> SageKernel | None:
    if capability == (9, 0):
        return CUDA_KERNELS["sm90"]
    if capability == (8, 9) or capability[0] == 12:
        return CUDA_KERNELS["sm89"]
    if capability[0] == 8:
        return CUDA_KERNELS["sm80"]
    return None


def run_sage(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    return_lse: bool,
    kernel: str,
    qk_quant_gran: str,
    pv_accum_dtype: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    sageattention = _package()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if kernel == "triton":
        # SageAttention 1.x smooths K by subtracting its mean in place; do it out of place (the op owns no input).
        # Softmax is invariant to it: q.(k_j - mean) differs from q.k_j by the same amount for every key j.
        k = k - k.mean(dim=1, keepdim=True)
        out = sageattention.sageattn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=scale, smooth_k=False)
        return out.contiguous(), no_lse(q)
    fn = getattr(sageattention, CUDA_KERNELS[kernel].function)
    result = fn(
        q, k, v, tensor_layout="NHD", is_causal=False, qk_quant_gran=qk_quant_gran, sm_scale=scale,
        pv_accum_dtype=pv_accum_dtype, return_lse=return_lse,
    )  # fmt: skip
    if return_lse:
        out, lse = result
        return out.contiguous(), lse_bhs(lse, q)
    return result.contiguous(), no_lse(q)


sage_attention = attention_op("dax::sage_attention", device_types="cuda")(run_sage)


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    if device.type != "cuda":
        raise BackendUnavailable(f"SageAttention runs on CUDA GPUs only (asked for {device}); use sdpa")
    if dtype not in HALF_DTYPES:
        raise BackendUnavailable(f"SageAttention needs bf16 or fp16 activations, not {dtype}; use sdpa")
    qk, pv = options["qk_quant_gran"], options["pv_accum_dtype"]
    capability = torch.cuda.get_device_capability(device)
    where = f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})"
    if flavour() == "triton":
        if qk != "auto" or pv != "auto":
            raise ValueError(
                "the installed SageAttention 1.x (Triton) quantizes Q and K per block and accumulates P·V in fp32: "
                "leave the SageAttention options on auto, or build SageAttention2 for the per-thread/per-warp "
                f"and P·V accumulation choices ({INSTALL_HINT})"
            )
        kernel, label = "triton", "SageAttention 1.x Triton kernel (int8 Q·K per block, fp16 P·V)"
    else:
        spec = _kernel_for(capability)
        if spec is None:
            raise BackendUnavailable(f"SageAttention2 has no CUDA kernel for {where}")
        core = importlib.import_module("sageattention.core")
        if not getattr(core, spec.enabled_flag, False) or not hasattr(_package(), spec.function):
            raise BackendUnavailable(
                f"the installed SageAttention2 lacks its {spec.key} kernel ({spec.function}) needed on {where}; "
                "rebuild it on this GPU (setup.py compiles the kernels of the GPUs it sees)"
            )
        if qk == "auto":  # what SageAttention's own ``sageattn`` uses on this GPU
            qk = "per_warp" if capability[0] == 12 else "per_thread"
        pv = spec.pv_accum[0] if pv == "auto" else pv
        if pv not in spec.pv_accum:
            raise ValueError(
                f"SageAttention2's {spec.key} kernel (used on {where}) accumulates P·V as "
                f"{' or '.join(spec.pv_accum)}, not {pv}: choose auto or one of those"
            )
        kernel = spec.key
        pv_kind = "fp16" if spec.key == "sm80" else "fp8"
        label = f"{spec.description} {spec.function} (int8 Q·K {qk}, {pv_kind} P·V, {pv} accumulation)"
    prepared = None
    if options["inputs"] != "sage":
        from .sage_prepared import fused_inputs

        prepared = fused_inputs(kernel, qk, pv, dtype, required=options["inputs"] == "fused")
        label += ", inputs prepared by DAX's norm kernels" if prepared is not None else ""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        check_qkv("sage", q, k, v)
        return sage_attention(q, k, v, scale, False, kernel, qk, pv)[0]

    def lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None):
        check_qkv("sage", q, k, v)
        return sage_attention(q, k, v, scale, True, kernel, qk, pv)

    # SageAttention 1.x does not return the log-sum-exp. SageAttention2's CUDA kernels launch on CUDA's legacy default
    # stream, not PyTorch's current one, so no CUDA graph can record them (its Triton kernels are recorded).
    triton_only = kernel == "triton"
    return BoundAttention(
        backend="sage",
        kernel=label,
        run=run,
        run_lse=None if triton_only else lse,
        capturable=triton_only,
        prepared=prepared,
    )


SAGE = register(
    AttentionBackend(
        name="sage",
        description="SageAttention2 CUDA kernels (sm90/sm89/sm80 by GPU), else SageAttention 1.x Triton kernels",
        check=_check,
        binder=_bind,
        options=OPTIONS,
        offers_lse=True,
    )
)
