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


# -- layering inside dax_core: recipe -> levers -> models, nothing importing back -----------------------------------

LEVERS = ("attention", "cache", "compile", "lora", "parallel", "quant")
ABOVE_LEVERS = ("accelerations", "rules", "runtime", "bench", "demo")


def _dax_imports(path: Path, *, type_checking: bool = True) -> set[str]:
    """Absolute ``dax_core`` modules (or names within them) that ``path`` imports, relative imports resolved;
    ``type_checking=False`` leaves out the imports under ``if TYPE_CHECKING:`` (annotations only)."""
    parts = path.relative_to(DAX_CORE.parent).with_suffix("").parts
    package = parts if path.name == "__init__.py" else parts[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skipped.update(id(inner) for inner in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "dax_core")
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if module.split(".")[0] == "dax_core":
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _area(name: str) -> str:
    """The top-level part of dax_core a module name belongs to: 'models', 'recipe', 'quant', ..."""
    return name.split(".")[1]


def _offenders(files, forbidden: tuple[str, ...], *, type_checking: bool = True) -> dict[str, list[str]]:
    found = {
        str(f.relative_to(DAX_CORE)): sorted(m for m in _dax_imports(f, type_checking=type_checking)
                                             if _area(m) in forbidden)
        for f in files
    }  # fmt: skip
    return {f: m for f, m in found.items() if m}


def test_the_recipe_is_data_importing_only_the_models_data_types():
    imported = _dax_imports(DAX_CORE / "recipe.py")
    assert imported, "the recipe imports the model's data types"
    data = {"dax_core.models.dtypes", "dax_core.models.info", "dax_core.experts"}  # experts: the model choices' table
    assert {m.rsplit(".", 1)[0] for m in imported} <= data


def test_the_models_import_no_lever_recipe_or_rule():
    """The model calls an attention kernel (its default and its signature come from ``dax_core.attention``); every
    other lever patches a built model from above, and the step cache plugs in through ``BlockStackCache``."""
    files = sorted((DAX_CORE / "models").rglob("*.py"))
    forbidden = (*(lever for lever in LEVERS if lever != "attention"), *ABOVE_LEVERS, "recipe")
    assert _offenders(files, forbidden) == {}
    assert not any(_area(m) == "cache" for m in _dax_imports(DAX_CORE / "models" / "wan.py"))


def test_the_levers_import_nothing_above_them():
    files = [f for lever in LEVERS for f in sorted((DAX_CORE / lever).rglob("*.py"))]
    assert len(files) > 10
    assert _offenders(files, tuple(a for a in ABOVE_LEVERS if a != "rules")) == {}


def test_the_rules_module_imports_no_lever_at_run_time():
    """The levers import the rules (the words of their refusals); the rules see the levers' objects only."""
    assert _offenders([DAX_CORE / "rules.py"], (*LEVERS, "accelerations", "runtime"), type_checking=False) == {}
