"""Merging a recipe's LoRAs into the weights: when the model is built, and again on a built model.

When the model is built, each parameter a LoRA touches gets ``strength * change`` added as it is loaded: in float32,
on the model's device, to the stored value dequantized to float32 (a ComfyUI scaled-fp8 or float8 file's weight
included), before the parameter takes its dtype and before quantization (so Quantize Linear quantizes the merged
weight). The change of a low-rank pair is ``(alpha / rank) * up @ down`` (1 without an alpha), of a full difference
the difference itself, as ComfyUI applies them.

A built model takes other LoRAs (new strengths, other files, none) with ``merge_again``: every parameter the old or
the new LoRAs touch is read again from the weights file, merged with the new LoRAs and written into the model in
place, through the same conversion as at build (and, for a quantized linear layer, the same quantization): the
model equals one built with the new LoRAs, bit for bit, and a compiled model is not compiled again. Nothing is held
between merges: the weights are read again from their file (from the page cache, which still holds them after the
build when the host has the memory; else from disk), the LoRA factors from the LoRA files. The alternatives cost
more: a copy of the unmerged weights (ComfyUI's patcher keeps one in host memory: 28 GB for 14B in bf16), or adding
``(new - old) * change`` to the stored weights, whose rounding accumulates with every change and which a quantized
weight cannot take at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.loading import inspect_weights, open_safetensors, read_parameters
from ..models.spec import WanSpec
from ..models.wan import WanLinear, WanModel
from ..quant.linear import QuantLinear, quantized_weight
from ..quant.torchao_linear import TorchaoQuantLinear
from ..recipe import LoraRef, Recipe
from .files import lora_fingerprint
from .plan import LoraError, LoraPlan, plan_lora

log = logging.getLogger(__name__)


def check_unchanged(ref: LoraRef) -> None:
    """Raise LoraError if the file of ``ref`` is not the one whose fingerprint the recipe carries."""
    now = lora_fingerprint(ref.path)
    if now != ref.fingerprint:
        raise LoraError(
            f"{ref.path}: the file changed since the Load LoRA node read it (fingerprint {now}, the recipe has "
            f"{ref.fingerprint}); queue the prompt again so that the node reads the new file"
        )


@dataclass
class LoraDeltas:
    """The float32 change of every parameter the LoRAs touch, ``sum(strength * change)``, read from their files.

    A context manager (it holds the LoRA files open); inside, pass it as ``deltas`` to ``load_wan_model`` or
    ``read_parameters``.
    """

    loras: Sequence[tuple[LoraRef, LoraPlan]]
    params: frozenset[str] = field(init=False)
    _stack: ExitStack | None = field(default=None, init=False, repr=False)
    _files: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = frozenset(name for _, plan in self.loras for name in plan.changes)

    def __enter__(self) -> LoraDeltas:
        self._stack = ExitStack()
        self._files = [self._stack.enter_context(open_safetensors(plan.path)) for _, plan in self.loras]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._files = None, []

    def __call__(self, name: str, device: torch.device) -> torch.Tensor | None:
        if name not in self.params:
            return None
        if self._stack is None:
            raise RuntimeError("LoraDeltas is used outside its `with` block")
        total: torch.Tensor | None = None
        for (ref, plan), f in zip(self.loras, self._files, strict=True):
            change = plan.changes.get(name)
            if change is None:
                continue
            pair = change.pair
            if pair is not None:
                up = f.get_tensor(pair.up).to(device, torch.float32).flatten(1)
                down = f.get_tensor(pair.down).to(device, torch.float32).flatten(1)
                alpha = 1.0 if pair.alpha is None else float(f.get_tensor(pair.alpha).item()) / pair.rank
                term = torch.mm(up, down).reshape(plan.shapes[name]).mul_(ref.strength * alpha)
                total = term if total is None else total.add_(term)
            if change.diff is not None:
                term = f.get_tensor(change.diff).to(device, torch.float32).mul_(ref.strength)
                total = term if total is None else total.add_(term)
        return total

    def summary_lines(self) -> list[str]:
        """One line per LoRA for the sampler's summary: what it changed, and the keys that matched nothing."""
        lines = []
        for ref, plan in self.loras:
            line = f"LoRA {plan.name} at strength {ref.strength:g}: {len(plan.changes)} parameters changed"
            unmatched = plan.describe_unmatched()
            lines.append(f"{line}; {unmatched}" if unmatched else line)
        return lines


def recipe_deltas(recipe: Recipe, spec: WanSpec | None = None) -> LoraDeltas:
    """The LoRAs of ``recipe`` planned for its model (``spec``, default: read from the weights' headers), after
    checking that each file is still the one the recipe names. Nothing is read but headers and fingerprints."""
    if recipe.loras and spec is None:
        spec = inspect_weights(recipe.weights).spec
    loras = []
    for ref in recipe.loras:
        plan = plan_lora(ref.path, spec)
        check_unchanged(ref)
        if plan.unmatched:
            log.warning("LoRA %s: %s", plan.name, plan.describe_unmatched())
        loras.append((ref, plan))
    return LoraDeltas(loras)


def can_merge_again(model: nn.Module) -> bool:
    """Whether ``merge_again`` can write into ``model`` (torchao's quantized tensors cannot be written in place)."""
    return not any(isinstance(m, TorchaoQuantLinear) for m in model.modules())


def merge_again(
    model: WanModel, recipe: Recipe, deltas: LoraDeltas, previous: frozenset[str], device: torch.device
) -> None:
    """Give the parameters of ``model`` (built from ``recipe``'s weights and dtypes) ``deltas`` instead of the LoRAs
    it has, which touched ``previous``: every parameter in either is read again and written in place."""
    if not can_merge_again(model):
        raise LoraError("a model quantized through torchao cannot take other LoRAs in place; build it again")
    names = sorted(previous | deltas.params)
    start = time.perf_counter()
    with deltas, torch.no_grad():
        values = read_parameters(
            recipe.weights,
            names,
            device=device,
            weight_dtype=recipe.weight_dtype,
            compute_dtype=recipe.torch_compute_dtype,
            deltas=deltas,
        )
        replaced = [name for name, value, scale in values if _write(model, name, value, scale)]
    graphs = getattr(model, "block_graphs", None)
    if replaced and graphs is not None:  # written in place, a tensor keeps its address and its graphs stay valid
        graphs.clear()
    log.info("merged %d LoRA(s) again: %d parameters in %.2f s", len(deltas.loras), len(names),
             time.perf_counter() - start)  # fmt: skip


def _write(model: WanModel, name: str, value: torch.Tensor, scale: torch.Tensor | None) -> bool:
    """Put a parameter as loading gives it (``value``, float8 ``scale``) into the built, maybe quantized, model, in
    place where it can; True where a tensor of the model was replaced by another."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, QuantLinear) and leaf == "weight":
        stored = WanLinear(module.in_features, module.out_features, bias=False, device="meta")
        stored.weight = nn.Parameter(value, requires_grad=False)
        stored.weight_scale = scale
        q, q_scale = quantized_weight(stored, module.qconfig)  # as QuantLinear.from_linear quantized it
        _copy(module.qweight, q, name)
        _copy(module.weight_scale, q_scale.float(), name)
        return False
    current = getattr(module, leaf)
    if isinstance(module, QuantLinear):  # the bias, kept in the layer's dtype
        value = value.to(current.dtype)
    replaced = current.shape != value.shape or current.dtype != value.dtype
    if replaced:
        setattr(module, leaf, nn.Parameter(value, requires_grad=False))
    else:
        current.copy_(value)
    if isinstance(module, WanLinear) and leaf == "weight":
        old = module.weight_scale
        if old is not None and scale is not None and old.shape == scale.shape:
            old.copy_(scale)
        elif old is not None or scale is not None:  # a float8 weight that gains or loses its scale
            module.weight_scale = None if scale is None else scale.to(value.device)
            replaced = True
    return replaced


def _copy(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if target.shape != value.shape or target.dtype != value.dtype:
        raise RuntimeError(f"{name}: quantized again as {value.dtype} {list(value.shape)}, the layer holds "
                           f"{target.dtype} {list(target.shape)}")  # fmt: skip
    target.copy_(value)
