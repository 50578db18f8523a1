"""``quantize_dynamic(model, qconfig_dict)``: swap a model's linear layers for 8-bit ones, by module name.

Rules (upstream DAX's, plus regexes):

- a key names a module, and its whole subtree inherits the value; ``""`` is the root, so it is the default;
- a value is a ``QConfig``, or ``None`` to keep that subtree in high precision;
- a module without a key of its own inherits its parent's value;
- a key ``"re:<pattern>"`` applies to every module whose full name matches the pattern (``re.fullmatch``)
  and, like a name, to their subtrees. A module's own name wins over a pattern; the first matching
  pattern, in dict order, wins over later ones.

On a ``WanModel`` keys may use diffusers' names too (``condition_embedder``, ``proj_out``...). A key that
names no module is an error listing the closest names, so a typo never silently quantizes everything.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping

import torch
from torch import nn

from ..models.wan import WanModel
from . import wan
from .fused_inputs import fuse_input_quantization
from .linear import QuantLinear, check_shape, takes_weight_as_stored
from .qconfig import SPLIT_TOKENS_HINT, QConfig, QuantizationError, require_fp8_support
from .torchao_linear import TorchaoQuantLinear, require_torchao, torchao_available

log = logging.getLogger(__name__)

REGEX_PREFIX = "re:"
BACKENDS = ("auto", "torch", "torchao")
# Schemes that "auto" runs through torchao (on CUDA, when it is importable). Empty: on the H100 (torch 2.11,
# torchao 0.18), DAX's own path ran the compiled linears of a 14B block faster for every scheme torchao has
# (FP8 rowwise 41.7 vs 42.7 ms, INT8 per token 59.3 vs 61.3 ms): one activation quantization serves q, k and v
# where torchao quantizes x once per layer, and its INT8 epilogue rounds once instead of twice.
# docs/benchmarks/quant_h100.md has the table; backend="torchao" selects torchao by name.
AUTO_TORCHAO_SCHEMES: frozenset[tuple[str, str]] = frozenset()
QUANTIZED_LINEARS = (QuantLinear, TorchaoQuantLinear)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _closest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    if close:
        return f"closest: {', '.join(close)}"
    return f"top-level modules: {', '.join(n for n in names if n and '.' not in n)}"


def _validated_rules(
    model: nn.Module, qconfig_dict: Mapping[str, QConfig | None]
) -> tuple[dict[str, QConfig | None], list[tuple[re.Pattern, QConfig | None]]]:
    if not isinstance(qconfig_dict, Mapping):
        raise QuantizationError(f"qconfig_dict must be a dict of module name -> QConfig or None, got {qconfig_dict!r}")
    other_names: list[str] = []
    if isinstance(model, WanModel):
        qconfig_dict, other_names = wan.translate_keys(model, qconfig_dict)
    module_names = [name for name, _ in model.named_modules()]
    known = set(module_names)
    exact: dict[str, QConfig | None] = {}
    patterns: list[tuple[re.Pattern, QConfig | None]] = []
    for key, value in qconfig_dict.items():
        if value is not None and not isinstance(value, QConfig):
            raise QuantizationError(f"qconfig_dict[{key!r}] must be a QConfig or None, got {type(value).__name__}")
        if not isinstance(key, str):
            raise QuantizationError(f"qconfig_dict keys are module names (str), got {key!r}")
        if key.startswith(REGEX_PREFIX):
            try:
                pattern = re.compile(key[len(REGEX_PREFIX) :])
            except re.error as e:
                raise QuantizationError(f"{key!r} is not a valid regular expression: {e}") from e
            if not any(pattern.fullmatch(n) for n in module_names):
                raise QuantizationError(f"{key!r} matches no module name of the model")
            patterns.append((pattern, value))
        elif key in known:
            exact[key] = value
        else:
            raise QuantizationError(
                f"{key!r} names no module of the model ({_closest(key, module_names + other_names)})"
            )
    return exact, patterns


def resolve_qconfigs(model: nn.Module, qconfig_dict: Mapping[str, QConfig | None]) -> dict[str, QConfig | None]:
    """The effective QConfig (or None) of every module of ``model``, by name, under the rules above."""
    exact, patterns = _validated_rules(model, qconfig_dict)
    resolved: dict[str, QConfig | None] = {}
    for name, _ in model.named_modules():  # parents come before their children
        if name in exact:
            resolved[name] = exact[name]
            continue
        match = next((value for pattern, value in patterns if pattern.fullmatch(name)), ...)
        if match is not ...:
            resolved[name] = match
        else:
            resolved[name] = resolved[_parent(name)] if name else None
    for key, value in exact.items():
        if value is not None and not any(isinstance(m, nn.Linear) for m in model.get_submodule(key).modules()):
            kind = type(model.get_submodule(key)).__name__
            raise QuantizationError(f"{key!r} holds no linear layer ({kind}); only linear layers are quantized")
    return resolved


def plan_quantization(model: nn.Module, qconfig_dict: Mapping[str, QConfig | None]) -> dict[str, QConfig | None]:
    """The QConfig (or None: kept) of every ``nn.Linear`` of ``model``, validated, without changing anything.

    Works on a meta-device model, so a keep list can be checked against a checkpoint's shape before loading.
    """
    resolved = resolve_qconfigs(model, qconfig_dict)
    plan = {name: resolved[name] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(model, WanModel):
        plan = wan.keep_variant_modules(plan)
        wan.check_float32_modules(plan)
    for name, cfg in plan.items():
        if cfg is not None:
            check_shape(name, model.get_submodule(name))
    return plan


def _backend_for(backend: str, qconfig: QConfig, device: torch.device) -> str:
    if backend != "auto":
        return backend
    scheme = (qconfig.family, qconfig.granularity)
    if device.type == "cuda" and scheme in AUTO_TORCHAO_SCHEMES and torchao_available():
        return "torchao"
    return "torch"


def quantize_dynamic(
    model: nn.Module,
    qconfig_dict: Mapping[str, QConfig | None],
    *,
    backend: str = "auto",
    compute_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Replace the linear layers of ``model`` in place, as ``qconfig_dict`` says; returns ``model``.

    Weights are quantized now, one layer at a time on the device they are on (FP8 weights with a per-tensor
    scale are taken as they are); activations at every call. ``backend``: ``"torch"`` (``_scaled_mm`` /
    ``_int_mm`` on CUDA, the reference path elsewhere), ``"torchao"`` (torchao's tensors; it must be installed),
    or ``"auto"`` (torchao for the schemes in ``AUTO_TORCHAO_SCHEMES``, none at present: see there).
    ``compute_dtype`` is the activation dtype the biases are kept in (default: ``model.compute_dtype`` if the
    model has one, else each bias's own dtype). Per-tensor schemes are refused on a model that runs
    sequence-parallel (``enable_sequence_parallel`` refuses them in the other order).
    """
    if backend not in BACKENDS:
        raise QuantizationError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "torchao":
        require_torchao()
    already = [n for n, m in model.named_modules() if isinstance(m, QUANTIZED_LINEARS)]
    if already:
        raise QuantizationError(f"the model is already quantized ({already[0]}...): build it again from its weights")
    plan = plan_quantization(model, qconfig_dict)
    todo = {name: cfg for name, cfg in plan.items() if cfg is not None}
    per_tensor = [name for name, cfg in todo.items() if not cfg.per_token]
    if per_tensor and getattr(model, "sequence_parallel", None) is not None:
        raise QuantizationError(f"{per_tensor[0]}: the model runs sequence-parallel, and {SPLIT_TOKENS_HINT}")
    for name, cfg in todo.items():  # every check before the first change: no half-quantized model on error
        if cfg.family == "fp8":
            require_fp8_support(model.get_submodule(name).weight.device)
    compute_dtype = compute_dtype or getattr(model, "compute_dtype", None)

    before = linear_weight_bytes(model)
    counts: dict[str, int] = {}
    as_is = 0
    for name, cfg in todo.items():
        linear = model.get_submodule(name)
        chosen = _backend_for(backend, cfg, linear.weight.device)
        cls = TorchaoQuantLinear if chosen == "torchao" else QuantLinear
        as_is += takes_weight_as_stored(linear, cfg)
        _replace(model, name, cls.from_linear(linear, cfg, compute_dtype, name))
        key = f"{cfg.describe()} ({chosen})"
        counts[key] = counts.get(key, 0) + 1
    fused = fuse_input_quantization(model) if isinstance(model, WanModel) else 0
    kept = [name for name, cfg in plan.items() if cfg is None]
    log.info(
        "quantized %s linear layers [%s]; %d FP8 weights taken as stored; %d kept in high precision%s; "
        "linear weights %.2f GiB -> %.2f GiB; %d blocks quantize their inputs in the kernels producing them",
        len(todo), ", ".join(f"{k}: {v}" for k, v in counts.items()), as_is, len(kept),
        f" ({', '.join(kept[:6])}{'...' if len(kept) > 6 else ''})" if kept else "",
        before / 2**30, linear_weight_bytes(model) / 2**30, fused,
    )  # fmt: skip
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent = model.get_submodule(_parent(name))
    setattr(parent, name.rpartition(".")[2], module)


def _tensor_bytes(t: torch.Tensor) -> int:
    if hasattr(t, "__tensor_flatten__"):  # a tensor subclass (torchao): count what it holds
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's linear layers (high precision or quantized): weights, scales, biases."""
    return sum(
        _tensor_bytes(t)
        for m in model.modules()
        if isinstance(m, (nn.Linear, *QUANTIZED_LINEARS))
        for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
    )
