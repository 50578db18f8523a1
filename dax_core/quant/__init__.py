"""FP8 and INT8 linear layers chosen by a ``qconfig_dict`` (upstream DAX's ``quantize_dynamic`` API).

from dax_core.quant import quantize_dynamic, get_dynamic_fp8_per_token_act_per_channel_weight_qconfig

quantize_dynamic(model, {
    "": get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(),
    "condition_embedder": None,  # diffusers names work on a WanModel too
    "proj_out": None,
})
"""

from .linear import QuantLinear
from .qconfig import (
    PER_TENSOR,
    PER_TOKEN_PER_CHANNEL,
    QConfig,
    QuantizationError,
    get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_fp8_per_token_act_per_channel_weight_qconfig,
    get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_int8_per_token_act_per_channel_weight_qconfig,
    qconfig_for,
    require_fp8_support,
)
from .quantize import linear_weight_bytes, plan_quantization, quantize_dynamic, resolve_qconfigs
from .torchao_linear import TorchaoQuantLinear, torchao_available
from .wan import DIFFUSERS_KEEP_DEFAULT, WAN_KEEP_DEFAULT

__all__ = [
    "DIFFUSERS_KEEP_DEFAULT",
    "PER_TENSOR",
    "PER_TOKEN_PER_CHANNEL",
    "WAN_KEEP_DEFAULT",
    "QConfig",
    "QuantLinear",
    "QuantizationError",
    "TorchaoQuantLinear",
    "get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig",
    "get_dynamic_fp8_per_token_act_per_channel_weight_qconfig",
    "get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig",
    "get_dynamic_int8_per_token_act_per_channel_weight_qconfig",
    "linear_weight_bytes",
    "plan_quantization",
    "qconfig_for",
    "quantize_dynamic",
    "require_fp8_support",
    "resolve_qconfigs",
    "torchao_available",
]
