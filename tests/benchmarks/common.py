"""Shared pieces of the GPU benchmarks: real Wan shapes, seeded random weights, timing, FLOP counts."""

from __future__ import annotations

import json
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B, WanSpec
from dax_core.models.wan import WanModel

# Kernel ceilings measured on the H100 (bf16 GEMM, cuDNN SDPA), TFLOP/s: the FLOP floor uses them.
GEMM_BF16_TFLOPS = 739.0
ATTN_CUDNN_TFLOPS = 577.0
TEXT_TOKENS = 512


@dataclass(frozen=True)
class Case:
    name: str
    spec: WanSpec
    width: int
    height: int
    frames: int

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (1, 16, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    @property
    def tokens(self) -> int:
        _, _, f, h, w = self.latent_shape
        return f * (h // 2) * (w // 2)

    def flops(self) -> dict[str, float]:
        """FLOPs of one forward (one CFG branch): linear layers, self-attention, cross-attention."""
        s, d, f, n = self.tokens, self.spec.dim, self.spec.ffn_dim, self.spec.num_layers
        linear = 2 * s * (4 * d * d + 2 * d * d + 2 * d * f) * n + 2 * TEXT_TOKENS * 2 * d * d * n
        self_attn = 4 * s * s * d * n
        cross_attn = 4 * s * TEXT_TOKENS * d * n
        return {"linear": linear, "self_attention": self_attn, "cross_attention": cross_attn}

    def floor_seconds(self) -> float:
        fl = self.flops()
        return fl["linear"] / (GEMM_BF16_TFLOPS * 1e12) + (fl["self_attention"] + fl["cross_attention"]) / (
            ATTN_CUDNN_TFLOPS * 1e12
        )


CASES = {
    "14b-720p": Case("Wan2.1-T2V-14B 1280x720x81", WAN21_T2V_14B, 1280, 720, 81),
    "1.3b-480p": Case("Wan2.1-T2V-1.3B 832x480x81", WAN21_T2V_1_3B, 832, 480, 81),
    "14b-480p": Case("Wan2.1-T2V-14B 832x480x81", WAN21_T2V_14B, 832, 480, 81),
}


def _seed(name: str, seed: int) -> int:
    return zlib.crc32(name.encode()) ^ seed


def seeded_values(wan_name: str, shape: tuple[int, ...], device: torch.device | str, seed: int) -> torch.Tensor:
    """The float32 values ``fill_seeded_`` gives the parameter ``wan_name`` of ``shape``, generated on ``device``."""
    g = torch.Generator(device=device).manual_seed(_seed(wan_name, seed))
    ndim = len(shape)
    if wan_name.endswith("modulation"):
        std = 0.1
    elif ndim >= 2:
        std = 0.5 / shape[-1] ** 0.5
    else:
        std = 0.02
    values = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * std
    if ndim == 1 and "norm" in wan_name and wan_name.endswith("weight"):
        values += 1.0
    return values


@torch.no_grad()
def fill_seeded_(module: torch.nn.Module, seed: int, rename: Callable[[str], str] = lambda n: n) -> None:
    """Deterministic random values per (Wan) parameter name, generated on the parameter's device in float32,
    so two implementations with different names get identical weights. Small scales keep 40 layers finite."""
    for name, p in module.named_parameters():
        p.copy_(seeded_values(rename(name), tuple(p.shape), p.device, seed))


def build_ours(spec: WanSpec, device: str, dtype: torch.dtype, seed: int) -> WanModel:
    model = WanModel(spec, device="meta", dtype=dtype).to_empty(device=device)
    fill_seeded_(model, seed)
    return model.eval()


def build_diffusers(spec: WanSpec, device: torch.device | str, dtype: torch.dtype, seed: int):
    """diffusers' WanTransformer3DModel built directly on ``device`` with the same seeded weights as
    ``build_ours`` (float32 where ``from_pretrained`` keeps it)."""
    from diffusers import WanTransformer3DModel

    from dax_core.models.naming import diffusers_to_wan

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(
                num_attention_heads=spec.num_heads, attention_head_dim=spec.head_dim, text_dim=spec.text_dim,
                freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim, num_layers=spec.num_layers,
            )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    for name, module in model.named_modules():
        if any(name.endswith(k) or f".{k}" in name for k in model._keep_in_fp32_modules):
            module.float()
    model.scale_shift_table.data = model.scale_shift_table.data.float()
    fill_seeded_(model, seed, rename=diffusers_to_wan)
    return model.eval()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 0) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones, each bracketed by ``sync``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def cuda_time(fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
    return timed(fn, reps, torch.device("cuda", torch.cuda.current_device()), warmup)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
