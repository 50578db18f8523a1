"""Pytest plugin: collect the repository root as a plain directory, not as a Python package.

The repository root is a ComfyUI custom-node package (it has ``__init__.py``), and pytest would
import that file, which needs a running ComfyUI, before any test. Loaded with ``-p`` from pyproject.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == REPO:
        return pytest.Dir.from_parent(parent, path=path)
    return None
