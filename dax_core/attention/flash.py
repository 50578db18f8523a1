"""``flash``: the FlashAttention package, version 3 (``flash_attn_interface``, Hopper) when it imports, else 2.

Both take [B, S, H, D] as they are (no layout change) and return the log-sum-exp on request. The call is a
custom op so torch.compile keeps it as one node whatever the installed version does inside.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from types import ModuleType

import torch

from .custom_op import attention_op, no_lse
from .registry import AttentionBackend, BackendUnavailable, BoundAttention, check_qkv, register
from .sdpa import HALF_DTYPES, lse_bhs

INSTALL_HINT = (
    "install FlashAttention 2 (pip install flash-attn --no-build-isolation) or build FlashAttention 3 from the "
    "hopper/ folder of the flash-attention sources (it provides flash_attn_interface)"
)


@functools.cache
def _import(module: str) -> ModuleType | str:
    """The module, or why it cannot be imported (an installed build that fails to load says so)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        return f"{module} is not installed" if err.name == module else f"{module} failed to import: {err}"
    except Exception as err:  # a binary built against another torch/CUDA raises OSError and friends
        return f"{module} failed to import: {err}"


def _fa3() -> ModuleType | str:
    return _import("flash_attn_interface")


def _fa2() -> ModuleType | str:
    return _import("flash_attn")


def _check() -> str | None:
    fa3, fa2 = _fa3(), _fa2()
    if isinstance(fa3, ModuleType) or isinstance(fa2, ModuleType):
        return None
    return f"{fa3}; {fa2}: {INSTALL_HINT}"


@functools.cache
def _takes_return_attn_probs(fn) -> bool:
    return "return_attn_probs" in inspect.signature(fn).parameters


def run_flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, return_lse: bool, version: int
) -> tuple[torch.Tensor, torch.Tensor]:
    module = _fa3() if version == 3 else _fa2()
    fn = module.flash_attn_func
    kwargs = {"softmax_scale": scale, "causal": False}
    if _takes_return_attn_probs(fn):
        kwargs["return_attn_probs"] = return_lse
    result = fn(q, k, v, **kwargs)
    # FlashAttention 2 returns (out, lse, probs) when asked; early FlashAttention 3 builds always return (out, lse).
    out, lse = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if not return_lse:
        return out.contiguous(), no_lse(q)
    return out.contiguous(), lse_bhs(lse, q)


flash_attention = attention_op("dax::flash_attention", device_types="cuda")(run_flash)


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    if device.type != "cuda":
        raise BackendUnavailable(f"FlashAttention runs on CUDA GPUs only (asked for {device}); use sdpa")
    if dtype not in HALF_DTYPES:
        raise BackendUnavailable(f"FlashAttention needs bf16 or fp16 activations, not {dtype}; use sdpa")
    capability = torch.cuda.get_device_capability(device)
    fa3, fa2 = _fa3(), _fa2()
    if isinstance(fa3, ModuleType) and capability[0] == 9:
        version, label = 3, "FlashAttention 3 (flash_attn_interface)"
    elif isinstance(fa2, ModuleType) and capability >= (8, 0):
        version, label = 2, f"FlashAttention {getattr(fa2, '__version__', '2')} (flash_attn)"
    else:
        gpu = torch.cuda.get_device_name(device)
        raise BackendUnavailable(
            f"no installed FlashAttention runs on {gpu} (compute capability {capability[0]}.{capability[1]}): "
            f"FlashAttention 3 needs Hopper (9.0), FlashAttention 2 needs 8.0 or newer ({fa3}; {fa2})"
        )

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        check_qkv("flash", q, k, v)
        return flash_attention(q, k, v, scale, False, version)[0]

    def run_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None):
        check_qkv("flash", q, k, v)
        return flash_attention(q, k, v, scale, True, version)

    return BoundAttention(backend="flash", kernel=label, run=run, run_lse=run_lse)


FLASH = register(
    AttentionBackend(
        name="flash",
        description="FlashAttention 3 (flash_attn_interface) when installed, else FlashAttention 2 (flash_attn)",
        check=_check,
        binder=_bind,
        offers_lse=True,
    )
)
