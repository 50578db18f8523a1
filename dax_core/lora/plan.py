"""What a LoRA file does to a model of one size, told from its header alone: which parameters change and how.

``plan_lora`` reads only the safetensors header (no tensor data, milliseconds even for a rank-128 14B LoRA) and
checks everything a merge needs before a weight is read: the file matches the model at all, every key that names a
layer has the shape that layer needs, low-rank pairs are complete, the tensors are floats. Keys that name nothing of
the model are kept (``unmatched``): the sampler's summary reports them, they are never dropped in silence.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..models.detect import expected_shapes
from ..models.safetensors_files import FLOAT_NAMES, TensorEntry, read_header
from ..models.spec import WanSpec
from ..models.weights_error import WeightsError
from .keys import ALPHA, DIFF, DOWN, UP, KeyMap, UnsupportedKey

EXAMPLES = 4  # key names quoted in a message


class LoraError(ValueError):
    """A LoRA file cannot be merged into the model; the message names the file and what to do."""


@dataclass(frozen=True)
class LowRank:
    """One low-rank pair: ``up @ down`` (times ``alpha / rank`` when the file has an alpha), as file keys."""

    up: str
    down: str
    alpha: str | None
    rank: int


@dataclass(frozen=True)
class ParamChange:
    """What a LoRA adds to one parameter, as keys of its file: a low-rank pair, a full difference, or both (summed;
    ComfyUI would take the difference alone)."""

    pair: LowRank | None = None
    diff: str | None = None


@dataclass(frozen=True)
class LoraPlan:
    """A LoRA file against a model of ``spec``: the change of every parameter it touches, and its other keys."""

    path: str
    spec: WanSpec
    changes: Mapping[str, ParamChange]  # Wan parameter name -> change
    unmatched: tuple[str, ...]  # keys that name no parameter of the model
    shapes: Mapping[str, tuple[int, ...]] = field(repr=False)  # Wan parameter name -> its shape

    @property
    def name(self) -> str:
        return Path(self.path).name

    def describe_unmatched(self) -> str:
        """'' when every key was merged, else how many keys matched nothing, with examples."""
        if not self.unmatched:
            return ""
        some = ", ".join(self.unmatched[:EXAMPLES]) + (" ..." if len(self.unmatched) > EXAMPLES else "")
        return f"{len(self.unmatched)} key(s) match no layer of this {self.spec.name} model and were not merged: {some}"


def plan_lora(path: str | os.PathLike, spec: WanSpec) -> LoraPlan:
    """The plan of the LoRA at ``path`` for a model of ``spec``; raises LoraError (naming the file and the first bad
    key) for a file that is no safetensors LoRA, matches nothing of the model, or does not fit it."""
    where = str(path)
    try:
        header = read_header(Path(path))
    except WeightsError as e:
        raise LoraError(str(e)) from e
    shapes = expected_shapes(spec)
    keys = KeyMap(shapes)
    entries = header.tensors
    found: dict[str, dict[str, dict[str, str]]] = {}  # param -> source -> role -> key
    unmatched: list[str] = []
    for key in sorted(entries):
        try:
            target = keys.target(key)
        except UnsupportedKey as e:
            raise LoraError(f"{where}: {e}; use a plain LoRA (lora_up/lora_down or lora_A/lora_B, diff, diff_b)") from e
        if target is None:
            unmatched.append(key)
            continue
        roles = found.setdefault(target.param, {}).setdefault(target.source, {})
        if target.role in roles:
            raise LoraError(f"{where}: {roles[target.role]} and {key} are both the {target.role} of {target.param}")
        roles[target.role] = key
    if not found:
        raise LoraError(f"{where}: {_foreign(entries, spec)}")
    changes = {param: _change(where, param, sources, entries, shapes[param]) for param, sources in found.items()}
    return LoraPlan(where, spec, changes, tuple(unmatched), shapes)


def _foreign(entries: Mapping[str, TensorEntry], spec: WanSpec) -> str:
    some = ", ".join(sorted(entries)[:EXAMPLES])
    if not entries:
        return "holds no tensors; expected a LoRA for a Wan2.1 text-to-video model"
    return (
        f"none of its {len(entries)} tensors (e.g. {some}) names a layer of a Wan2.1 T2V {spec.name} model: it is a "
        "LoRA for another model family (Flux, SDXL, HunyuanVideo...) or not a LoRA; use a LoRA made for Wan2.1 T2V "
        "(keys like diffusion_model.blocks.0.self_attn.q.lora_down.weight)"
    )


def _change(
    where: str,
    param: str,
    sources: Mapping[str, Mapping[str, str]],
    entries: Mapping[str, TensorEntry],
    shape: tuple[int, ...],
) -> ParamChange:
    if len(sources) > 1:
        first, second = (sorted(roles.values())[0] for roles in list(sources.values())[:2])
        raise LoraError(f"{where}: {first} and {second} both change {param}: one layer under two names in one file")
    (roles,) = sources.values()
    for role, key in roles.items():
        if role != ALPHA and entries[key].dtype not in FLOAT_NAMES:  # an alpha may be stored as an integer
            raise LoraError(f"{where}: {key} is stored as {entries[key].dtype}; LoRA tensors are floating point")
    diff = roles.get(DIFF)
    if diff is not None and entries[diff].shape != shape:
        raise _shape_error(where, diff, list(entries[diff].shape), f"the shape of {param}, {list(shape)}")
    if UP in roles or DOWN in roles:
        return ParamChange(_pair(where, param, roles, entries, shape), diff)
    if ALPHA in roles:
        raise LoraError(f"{where}: {roles[ALPHA]} is the alpha of a low-rank pair whose up and down are missing")
    return ParamChange(None, diff)


def _pair(
    where: str, param: str, roles: Mapping[str, str], entries: Mapping[str, TensorEntry], shape: tuple[int, ...]
) -> LowRank:
    if UP not in roles or DOWN not in roles:
        have, lacks = (UP, DOWN) if UP in roles else (DOWN, UP)
        raise LoraError(f"{where}: {roles[have]} has no {lacks} half (the file is incomplete or damaged)")
    up, down = entries[roles[UP]].shape, entries[roles[DOWN]].shape
    rank = down[0] if down else 0
    fits = (
        len(shape) >= 2
        and len(up) >= 2
        and len(down) >= 2
        and up[0] == shape[0]
        and math.prod(up[1:]) == rank > 0
        and math.prod(down[1:]) == math.prod(shape[1:])
    )
    if not fits:
        need = f"up [{shape[0]}, rank] and down [rank, {', '.join(map(str, shape[1:]))}] for {param} {list(shape)}"
        raise _shape_error(where, f"{roles[UP]} / {roles[DOWN]}", f"{list(up)} / {list(down)}", need)
    alpha = roles.get(ALPHA)
    if alpha is not None and entries[alpha].numel != 1:
        raise LoraError(f"{where}: {alpha} has shape {list(entries[alpha].shape)}; an alpha is one number")
    return LowRank(roles[UP], roles[DOWN], alpha, rank)


def _shape_error(where: str, key: str, got: object, need: str) -> LoraError:
    return LoraError(
        f"{where}: {key} has shape {got}, but the model needs {need}: the LoRA was made "
        "for another model size (a 1.3B LoRA on a 14B model, or the reverse); use one made for this model"
    )
