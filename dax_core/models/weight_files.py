"""Where the tensors of a weights path live: one safetensors file, or the shards of a diffusers folder.

Accepted paths: a ``.safetensors`` file; a diffusers transformer folder holding
``diffusion_pytorch_model.safetensors`` or ``diffusion_pytorch_model.safetensors.index.json`` plus its
shards (and usually ``config.json``); a diffusers repository folder with such a ``transformer/`` inside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .safetensors_files import SafetensorsHeader, TensorEntry, read_header
from .weights_error import WeightsError

DIFFUSERS_SINGLE = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_TRANSFORMER = "transformer"


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[Path, ...]
    weight_map: Mapping[str, str]  # tensor name -> shard file name, from a diffusers index ({} otherwise)
    config: Mapping[str, Any]  # the diffusers config.json beside the weights ({} when there is none)


@dataclass(frozen=True)
class TensorLocation:
    file: Path
    name: str  # the tensor's name in the file
    entry: TensorEntry


def locate_weight_files(path: Path) -> WeightFiles:
    """The safetensors files of ``path``; raises WeightsError naming the path when it holds none."""
    if path.is_file():
        return WeightFiles(files=(path,), weight_map={}, config={})
    if not path.exists():
        raise WeightsError(
            f"{path}: no such file or folder; expected a .safetensors file or a diffusers transformer folder"
        )
    if not path.is_dir():
        raise WeightsError(f"{path}: not a regular file or folder; expected a .safetensors file")
    if (path / DIFFUSERS_TRANSFORMER).is_dir():
        return locate_weight_files(path / DIFFUSERS_TRANSFORMER)
    config = _read_json(path / DIFFUSERS_CONFIG) if (path / DIFFUSERS_CONFIG).is_file() else {}
    if (path / DIFFUSERS_INDEX).is_file():
        return _sharded(path, path / DIFFUSERS_INDEX, config)
    if (path / DIFFUSERS_SINGLE).is_file():
        return WeightFiles(files=(path / DIFFUSERS_SINGLE,), weight_map={}, config=config)
    found = sorted(p.name for p in path.iterdir())
    hint = (
        f"; it holds {', '.join(f for f in found if f.endswith('.safetensors'))} - pass that file itself"
        if any(f.endswith(".safetensors") for f in found)
        else ""
    )
    raise WeightsError(
        f"{path}: a folder that is neither a diffusers transformer folder nor a diffusers repository: expected "
        f"{DIFFUSERS_INDEX} (with its shards), {DIFFUSERS_SINGLE} or a {DIFFUSERS_TRANSFORMER}/ subfolder, found "
        f"{', '.join(found[:8]) or 'nothing'}{' ...' if len(found) > 8 else ''}{hint}"
    )


def _sharded(folder: Path, index: Path, config: Mapping[str, Any]) -> WeightFiles:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightsError(f"{index}: has no weight_map of tensor name -> shard file; the index is damaged")
    files = tuple(folder / name for name in sorted(set(weight_map.values())))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeightsError(
            f"{index}: lists shard(s) {', '.join(missing)} that are not in {folder}; the download is incomplete - "
            "fetch the missing shards"
        )
    return WeightFiles(files=files, weight_map=weight_map, config=config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: cannot be read as JSON ({e}); the file is damaged") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a JSON {type(data).__name__}, expected an object")
    return data


def read_tensor_table(weight_files: WeightFiles) -> tuple[tuple[SafetensorsHeader, ...], dict[str, TensorLocation]]:
    """The validated headers of all files and where each tensor name lives (headers only, no tensor data)."""
    headers = tuple(read_header(f) for f in weight_files.files)
    table: dict[str, TensorLocation] = {}
    for header in headers:
        for name, entry in header.tensors.items():
            if name in table:
                raise WeightsError(
                    f"{header.path}: tensor {name!r} is also in {table[name].file}; the shards do not belong together"
                )
            table[name] = TensorLocation(file=header.path, name=name, entry=entry)
    for name, shard in weight_files.weight_map.items():
        if name not in table or table[name].file.name != shard:
            raise WeightsError(
                f"{weight_files.files[0].parent / shard}: the index says it holds {name!r}, but it does not; "
                "the index and shards come from different versions - fetch the folder again"
            )
    return headers, table
