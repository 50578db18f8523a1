"""Wan2.1 DiT weights (T2V, I2V, FLF2V): inspect a file from its header, load it one tensor at a time.

Reads single safetensors files in original / ComfyUI naming (with or without ``model.diffusion_model.``)
or diffusers naming, diffusers folders (sharded or not, or a repository with ``transformer/``), in
bf16 / fp16 / fp32 / fp8_e4m3fn / fp8_e5m2 and ComfyUI scaled fp8 (``X.scale_weight`` per-tensor scales
and a ``scaled_fp8`` marker; ``X.scale_input`` is ignored). Anything else raises WeightsError.

Loading builds the model on the meta device and fills it tensor by tensor: the host holds the model
being built plus one stored tensor (and its conversion), never the whole file twice. LoRA changes merge into the
parameters as they stream in (``deltas``); ``read_parameters`` gives a built model any of its parameters again, as
loading gave them, so that it can take other LoRAs without being built anew.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .detect import (
    NUM_HEADS_METADATA,
    SUPPORTED,
    describe_foreign,
    describe_variant_by_name,
    expected_shapes,
    infer_spec,
)
from .dtypes import WEIGHT_DTYPES
from .info import ModelInfo
from .naming import detect_naming, strip_comfy_prefix, to_wan_name
from .safetensors_files import FLOAT_NAMES, ITEMSIZE, SafetensorsHeader
from .spec import WanSpec
from .wan import WanLinear, WanModel
from .weight_conversion import convert_parameter, is_block_linear_weight
from .weight_files import TensorLocation, locate_weight_files, read_tensor_table
from .weights_error import WeightsError

__all__ = ["DeltaFn", "WeightsError", "WeightsInfo", "inspect_weights", "load_wan_model", "read_parameters"]

logger = logging.getLogger(__name__)

SCALED_FP8_MARKER = "scaled_fp8"
SCALE_WEIGHT = ".scale_weight"
SCALE_INPUT = ".scale_input"  # ComfyUI's activation scale for fp8 matmuls: not used here
COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_EXAMPLE = "e.g. wan2.1_t2v_1.3B_bf16.safetensors, wan2.1_i2v_480p_14B_bf16.safetensors or a diffusers Wan2.1 folder"
_EXPECTED = (
    f"expected a Wan2.1 diffusion model ({_EXAMPLE}), whose tensors are "
    "named like blocks.0.self_attn.q.weight and head.modulation (original/ComfyUI naming) or "
    "blocks.0.attn1.to_q.weight and scale_shift_table (diffusers naming)"
)


@dataclass(frozen=True)
class WeightsInfo:
    """What ``inspect_weights`` learns from the headers of a weights file or folder."""

    path: str
    naming: str  # "wan" (original / ComfyUI) or "diffusers"
    model: ModelInfo  # the model the file holds: spec, variant, family (what a recipe carries)
    stored_dtype: str  # dtype of the blocks' linear weights (most of the bytes), e.g. "bf16", "fp8_e4m3fn"
    scaled_fp8: bool  # ComfyUI scaled fp8: per-tensor scale_weight beside the float8 weights
    total_bytes: int
    files: tuple[str, ...]

    @property
    def spec(self) -> WanSpec:
        return self.model.spec


@dataclass(frozen=True)
class _WeightsPlan:
    info: WeightsInfo
    params: Mapping[str, TensorLocation]  # Wan parameter name -> its stored tensor
    scales: Mapping[str, TensorLocation]  # Wan linear weight name -> its scale_weight tensor


def inspect_weights(path: str | os.PathLike) -> WeightsInfo:
    """Naming, size and dtype of the weights at ``path``, from the safetensors headers only.

    Raises WeightsError (naming the file and what it looks like) for anything that is not a complete
    Wan2.1 DiT of a variant DAX runs (T2V, I2V, FLF2V).
    """
    return _plan(Path(path)).info


DeltaFn = Callable[[str, torch.device], "torch.Tensor | None"]
"""A parameter's float32 change (a LoRA's), by Wan name, on the given device; None for a parameter left as stored."""


def load_wan_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device,
    weight_dtype: str = "default",
    compute_dtype: torch.dtype = torch.bfloat16,
    deltas: DeltaFn | None = None,
    expect: ModelInfo | None = None,
) -> WanModel:
    """Build the WanModel stored at ``path`` on ``device``, converting dtypes as ``weight_conversion`` describes.

    ``deltas``: changes merged into the parameters as they load (LoRAs), before any conversion of their dtype.
    ``expect``: the model the caller resolved from this file earlier (a recipe's); a file that now holds another
    raises WeightsError before any tensor is read.
    """
    _check_dtypes(weight_dtype, compute_dtype)
    device = torch.device(device)
    plan = _plan(Path(path))
    if expect is not None and plan.info.spec != expect.spec:
        raise WeightsError(
            f"{path} now holds a {plan.info.model.variant} model, but the recipe was made for a {expect.variant} "
            "model: the file changed since Load Wan DAX read it - run the workflow again"
        )
    model = WanModel(plan.info.spec, device=torch.device("meta"), dtype=compute_dtype)
    linears = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, WanLinear)}
    converted = _converted(plan, plan.params, set(linears), device, weight_dtype, compute_dtype, deltas)
    for name, value, scale in converted:
        module_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module_name), leaf, nn.Parameter(value, requires_grad=False))
        if name in linears:
            linears[name].weight_scale = None if scale is None else scale.to(device)
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:  # unreachable when _plan's key check holds; guards the invariant the model relies on
        raise WeightsError(f"{path}: parameters {', '.join(left)} were not loaded")
    logger.info(
        "loaded %s (%s, %s naming, stored %s) to %s: weights %s, compute %s",
        path,
        plan.info.spec.name,
        plan.info.naming,
        plan.info.stored_dtype,
        device,
        weight_dtype,
        compute_dtype,
    )
    return model.eval()


def read_parameters(
    path: str | os.PathLike,
    names: Collection[str],
    *,
    device: str | torch.device,
    weight_dtype: str = "default",
    compute_dtype: torch.dtype = torch.bfloat16,
    deltas: DeltaFn | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """``(name, value, scale)`` for the parameters ``names`` (Wan names), one at a time, exactly as ``load_wan_model``
    with the same arguments gives them to the model; ``scale`` is a float8 linear weight's per-tensor scale, else
    None. What a built model needs to take its stored weights again (with other LoRAs) without being built anew."""
    _check_dtypes(weight_dtype, compute_dtype)
    plan = _plan(Path(path))
    unknown = [name for name in names if name not in plan.params]
    if unknown:
        raise WeightsError(f"{path}: has no parameter {_some(unknown)}")
    meta = WanModel(plan.info.spec, device=torch.device("meta"))
    linear_names = {f"{name}.weight" for name, m in meta.named_modules() if isinstance(m, WanLinear)}
    params = {name: plan.params[name] for name in names}
    yield from _converted(plan, params, linear_names, torch.device(device), weight_dtype, compute_dtype, deltas)


def _check_dtypes(weight_dtype: str, compute_dtype: torch.dtype) -> None:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {compute_dtype} is not one of {', '.join(map(str, COMPUTE_DTYPES))}")


def _converted(
    plan: _WeightsPlan,
    params: Mapping[str, TensorLocation],
    linear_names: Collection[str],
    device: torch.device,
    weight_dtype: str,
    compute_dtype: torch.dtype,
    deltas: DeltaFn | None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, value, float8 scale or None) of ``params``, read and converted one at a time, in storage order."""
    scale_locations = {name: plan.scales[name] for name in params if name in plan.scales}
    scales = {name: tensor.reshape(()).float() for name, tensor in _stream(scale_locations)}
    for name, stored in _stream(params):
        delta = deltas(name, device) if deltas is not None else None
        value, scale = convert_parameter(
            name,
            stored.to(device),
            scales.get(name),
            linear_weight=name in linear_names,
            weight_dtype=weight_dtype,
            compute_dtype=compute_dtype,
            delta=delta,
        )
        del stored, delta  # before the next read: at most one stored tensor at a time
        yield name, value, scale


def open_safetensors(file: Path):
    """safe_open reading each tensor into fresh memory with pread(2) (safetensors >= 0.8).

    The default memory-mapped reading keeps every page of the file it touched mapped, and counted in the
    process's resident memory, until the file is closed; older safetensors only have that mode.
    """
    try:
        return safe_open(str(file), framework="pt", device="cpu", backend="pread")
    except TypeError:
        return safe_open(str(file), framework="pt", device="cpu")


def _stream(locations: Mapping[str, TensorLocation]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, stored tensor on the CPU) one at a time, file by file, in storage order."""
    by_file: dict[Path, list[tuple[str, TensorLocation]]] = {}
    for name, loc in locations.items():
        by_file.setdefault(loc.file, []).append((name, loc))
    for file, items in by_file.items():
        with open_safetensors(file) as f:
            for name, loc in sorted(items, key=lambda item: item[1].entry.offset):
                yield name, f.get_tensor(loc.name)


def _plan(path: Path) -> _WeightsPlan:
    """Everything about ``path`` short of tensor data: the spec, and where each parameter and scale is stored."""
    where = str(path)
    weight_files = locate_weight_files(path)
    headers, table = read_tensor_table(weight_files)
    if not table:
        raise WeightsError(f"{where}: holds no tensors; {_EXPECTED}")
    stripped: dict[str, TensorLocation] = {}
    for name, loc in table.items():
        other = stripped.setdefault(strip_comfy_prefix(name), loc)
        if other is not loc:
            raise WeightsError(f"{where}: holds {other.name} and {name}, two copies of one tensor; {_EXPECTED}")
    foreign = describe_foreign(stripped.keys()) or describe_variant_by_name(where)
    if foreign:
        raise WeightsError(f"{where}: {foreign}. Pick a Wan2.1 diffusion model here ({_EXAMPLE})")
    naming = detect_naming(stripped.keys())
    if naming is None:
        sample = ", ".join(sorted(table)[:4])
        raise WeightsError(f"{where}: an unknown model ({len(table)} tensors such as {sample}); {_EXPECTED}")

    params: dict[str, TensorLocation] = {}
    scales: dict[str, TensorLocation] = {}
    unexpected: list[str] = []
    scaled_fp8 = False
    for name, loc in stripped.items():
        if name == SCALED_FP8_MARKER:
            scaled_fp8 = True
        elif name.endswith(SCALE_INPUT):
            continue
        elif name.endswith(SCALE_WEIGHT):
            target = to_wan_name(name[: -len(SCALE_WEIGHT)] + ".weight", naming)
            scales[target or loc.name] = loc
        elif (wan_name := to_wan_name(name, naming)) is None or wan_name in params:
            unexpected.append(loc.name)
        else:
            params[wan_name] = loc

    spec = infer_spec(
        {name: loc.entry.shape for name, loc in params.items()},
        num_heads=_num_heads(where, headers, weight_files.config),
        where=where,
    )
    _check_tensors(where, spec, params, scales, unexpected)
    by_dtype: Counter[str] = Counter()
    for loc in (loc for name, loc in params.items() if is_block_linear_weight(name)):
        by_dtype[loc.entry.dtype] += loc.entry.numel * ITEMSIZE[loc.entry.dtype]
    info = WeightsInfo(
        path=where,
        naming=naming,
        model=ModelInfo.of(spec),
        stored_dtype=FLOAT_NAMES[by_dtype.most_common(1)[0][0]],
        scaled_fp8=scaled_fp8 or bool(scales),
        total_bytes=sum(h.file_size for h in headers),
        files=tuple(str(h.path) for h in headers),
    )
    return _WeightsPlan(info=info, params=params, scales=scales)


def _num_heads(where: str, headers: tuple[SafetensorsHeader, ...], config: Mapping) -> int | None:
    """Heads from the files' ``dax.num_heads`` metadata, else from a diffusers config.json, else None."""
    values = {h.metadata[NUM_HEADS_METADATA] for h in headers if NUM_HEADS_METADATA in h.metadata}
    if len(values) > 1:
        raise WeightsError(f"{where}: the shards disagree on {NUM_HEADS_METADATA} ({', '.join(sorted(values))})")
    if values:
        value = values.pop()
        if not value.isdigit() or int(value) <= 0:
            raise WeightsError(f"{where}: metadata {NUM_HEADS_METADATA}={value!r} is not a positive integer")
        return int(value)
    heads = config.get("num_attention_heads")
    return heads if isinstance(heads, int) and heads > 0 else None


def _check_tensors(
    where: str,
    spec: WanSpec,
    params: Mapping[str, TensorLocation],
    scales: Mapping[str, TensorLocation],
    unexpected: list[str],
) -> None:
    """Every parameter of ``spec`` present with its shape and a float dtype, nothing unknown, scalar scales."""
    expected = expected_shapes(spec)
    unexpected = unexpected + [loc.name for name, loc in params.items() if name not in expected]
    unexpected += [loc.name for name, loc in scales.items() if name not in params]
    if unexpected:
        raise WeightsError(
            f"{where}: holds tensors a Wan2.1 {spec.name} model does not have: {_some(unexpected)}; "
            f"the file is another Wan variant or was modified - use an unmodified file ({SUPPORTED})"
        )
    missing = [name for name in expected if name not in params]
    if missing:
        raise WeightsError(
            f"{where}: incomplete - lacks {len(missing)} tensor(s) of a Wan2.1 {spec.name} model: "
            f"{_some(missing)}; the file is damaged or only part of a model - fetch it again"
        )
    for name, loc in params.items():
        if loc.entry.shape != expected[name]:
            raise WeightsError(
                f"{where}: tensor {loc.name} has shape {list(loc.entry.shape)}, expected {list(expected[name])} "
                f"for a Wan2.1 {spec.name} model; the file mixes tensors of different models"
            )
        if loc.entry.dtype not in FLOAT_NAMES:
            raise WeightsError(
                f"{where}: tensor {loc.name} is stored as {loc.entry.dtype}, expected a floating dtype "
                "(bf16, fp16, fp32, fp8); integer-quantized files are not supported"
            )
    linear_weights = {name for name, shape in expected.items() if len(shape) == 2}  # WanModel's 2-D params
    for name, loc in scales.items():
        if loc.entry.numel != 1 or loc.entry.dtype not in FLOAT_NAMES:
            raise WeightsError(
                f"{where}: {loc.name} is a {loc.entry.dtype} {list(loc.entry.shape)} tensor, expected a single "
                "float scale (ComfyUI scaled fp8); per-channel scaled files are not supported"
            )
        if name not in linear_weights:
            raise WeightsError(f"{where}: {loc.name} scales {name}, which is not the weight of a linear layer")


def _some(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
