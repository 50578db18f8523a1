"""What the tests run against: the repository checkout and the optional packages installed here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, looked up without importing it: a compiled backend's import can be
    slow or fail for reasons other than its absence."""
    return importlib.util.find_spec(module) is not None
