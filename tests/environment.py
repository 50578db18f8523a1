"""What the tests run against: the repository checkout and the optional packages installed here."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, looked up without importing it: a compiled backend's import can be
    slow or fail for reasons other than its absence."""
    return importlib.util.find_spec(module) is not None


def tool_module(name: str) -> types.ModuleType:
    """``tools/<name>.py`` (the repository's scripts are not a package), executed afresh as ``dax_tools_<name>``."""
    spec = importlib.util.spec_from_file_location(f"dax_tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
