"""The dtype names a model's weights and activations may take, shared by the recipe and the loader."""

from __future__ import annotations

import torch

WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn")
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}
