"""dax_core is framework-free: it never imports ComfyUI, so it runs alone and inside worker processes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DAX_CORE = Path(__file__).resolve().parents[2] / "dax_core"
COMFY_MODULES = (
    "comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "nodes", "server", "execution"
)  # fmt: skip


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_dax_core_module_imports_comfy():
    files = sorted(DAX_CORE.rglob("*.py"))
    assert len(files) > 10
    offenders = {
        str(f.relative_to(DAX_CORE)): sorted(m for m in _imported_modules(f) if m.split(".")[0] in COMFY_MODULES)
        for f in files
    }
    assert {f: m for f, m in offenders.items() if m} == {}


def test_importing_every_dax_core_module_loads_no_comfy_module():
    modules = [
        ".".join(f.relative_to(DAX_CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        for f in sorted(DAX_CORE.rglob("*.py"))
        if f.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=DAX_CORE.parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
