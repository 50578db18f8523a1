"""What a quantized linear layer is: the 8-bit formats and the scale granularity (``QConfig``).

The helper names are upstream DAX's, so ``qconfig_dict`` code written for it ports with an import change.
FP8 uses e4m3 for activations and weights by default (3 mantissa bits; e5m2's wider range buys nothing
when every token gets its own scale, and its 2 mantissa bits double the rounding error).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PER_TENSOR = "per-tensor"
PER_TOKEN_PER_CHANNEL = "per-token-per-channel"
GRANULARITIES = (PER_TENSOR, PER_TOKEN_PER_CHANNEL)

FP8_ACTIVATION_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_WEIGHT_DTYPES = (torch.float8_e4m3fn,)


SPLIT_TOKENS_HINT = (
    "a per-tensor activation scale is the largest value over every token of a layer's input, so with the tokens "
    "split over GPUs each GPU would take its own scale and the result would differ from one GPU's; use granularity "
    "'per-token-per-channel' (as fast, and more accurate) or run on one GPU"
)


class QuantizationError(ValueError):
    """A quantization request cannot be met; the message says what to change."""


@dataclass(frozen=True)
class QConfig:
    """Dynamic symmetric quantization of one linear layer.

    Activations are quantized at every call (one scale per tensor, or per token); weights once, when
    the model is built (one scale per tensor, or per output channel). ``fast_accum`` lets FP8 tensor
    cores skip the periodic FP32 promotion of the accumulator: about 7% faster GEMMs on an H100 for a
    relative error of ~1.5e-3, twenty times below FP8's own rounding error. It means nothing for INT8,
    whose int32 accumulation is exact.
    """

    activation_dtype: torch.dtype
    weight_dtype: torch.dtype
    granularity: str
    fast_accum: bool = True

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise QuantizationError(f"granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        pair = (self.activation_dtype, self.weight_dtype)
        fp8 = self.activation_dtype in FP8_ACTIVATION_DTYPES and self.weight_dtype in FP8_WEIGHT_DTYPES
        int8 = pair == (torch.int8, torch.int8)
        if not (fp8 or int8):
            raise QuantizationError(
                f"unsupported activation/weight dtypes {pair}: use int8/int8, or float8_e4m3fn (or float8_e5m2) "
                "activations with float8_e4m3fn weights"
            )

    @property
    def family(self) -> str:
        """'fp8' or 'int8'."""
        return "int8" if self.weight_dtype == torch.int8 else "fp8"

    @property
    def per_token(self) -> bool:
        """One scale per activation row and per weight output channel (else one per tensor).

        Per token, every output row of a layer depends on its own input row alone, so a layer run on a slice
        of the tokens (sequence parallelism) computes exactly the rows it computes on all of them.
        """
        return self.granularity == PER_TOKEN_PER_CHANNEL

    def describe(self) -> str:
        return f"{self.family} {self.granularity}"


def get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(
    activation_dtype: torch.dtype = torch.float8_e4m3fn,
    weight_dtype: torch.dtype = torch.float8_e4m3fn,
    fast_accum: bool = True,
) -> QConfig:
    """FP8 with one scale per token (activations) and per output channel (weights): the fast, accurate default."""
    return QConfig(activation_dtype, weight_dtype, PER_TOKEN_PER_CHANNEL, fast_accum)


def get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig(
    activation_dtype: torch.dtype = torch.float8_e4m3fn,
    weight_dtype: torch.dtype = torch.float8_e4m3fn,
    fast_accum: bool = True,
) -> QConfig:
    """FP8 with one scale per activation tensor and one per weight (the scale of ComfyUI's scaled fp8 files)."""
    return QConfig(activation_dtype, weight_dtype, PER_TENSOR, fast_accum)


def get_dynamic_int8_per_token_act_per_channel_weight_qconfig(
    activation_dtype: torch.dtype = torch.int8, weight_dtype: torch.dtype = torch.int8
) -> QConfig:
    """INT8 with one scale per token (activations) and per output channel (weights)."""
    return QConfig(activation_dtype, weight_dtype, PER_TOKEN_PER_CHANNEL)


def get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig(
    activation_dtype: torch.dtype = torch.int8, weight_dtype: torch.dtype = torch.int8
) -> QConfig:
    """INT8 with one scale per activation tensor and one per weight."""
    return QConfig(activation_dtype, weight_dtype, PER_TENSOR)


def qconfig_for(dtype: str, granularity: str) -> QConfig:
    """The QConfig of a (dtype, granularity) pair as the nodes and recipes name them: ('fp8', 'per-tensor')..."""
    helpers = {
        ("fp8", PER_TOKEN_PER_CHANNEL): get_dynamic_fp8_per_token_act_per_channel_weight_qconfig,
        ("fp8", PER_TENSOR): get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig,
        ("int8", PER_TOKEN_PER_CHANNEL): get_dynamic_int8_per_token_act_per_channel_weight_qconfig,
        ("int8", PER_TENSOR): get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig,
    }
    if (dtype, granularity) not in helpers:
        raise QuantizationError(
            f"unknown scheme ({dtype!r}, {granularity!r}): dtype is fp8 or int8, granularity one of "
            f"{', '.join(GRANULARITIES)}"
        )
    return helpers[(dtype, granularity)]()


def require_fp8_support(device: torch.device | str) -> None:
    """Raise unless ``device`` can run FP8 GEMMs (CUDA compute capability 8.9+). CPUs run the reference path."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise QuantizationError(
            f"FP8 linears need an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            f"{name} is {major}.{minor}. Choose int8 instead."
        )
