"""The layering of the package: each stage imports only stages below it, and the trial engine has no Ray/MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vfm_ablate

PACKAGE = Path(vfm_ablate.__file__).parent

# Lower layers first. A module may import its own package (same layer name) and any lower layer, nothing above:
# cli -> sweep -> report -> trial -> diagnostics -> alignment / data / models / tracking -> config -> errors /
# validation.
LAYERS = {
    "errors": 0,
    "validation": 1,
    "overrides": 1,
    "text_tables": 1,
    "digests": 1,
    "config": 2,
    "device": 2,
    "alignment": 3,
    "data": 3,
    "models": 3,
    "tracking": 3,
    "trialfile": 4,
    "diagnostics": 4,
    "fetch": 4,
    "trial": 5,
    "report": 6,
    "calibration": 6,
    "sweep": 7,
    "cli": 8,
    "__main__": 9,
}
# the packages that make up the trial engine: none of them may import Ray or MLflow, even inside a function
ENGINE = ("trial", "diagnostics", "alignment", "data", "models", "config", "device", "trialfile")


def _layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports anywhere in it (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py: its own package)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            if name.startswith("vfm_ablate"):
                found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_module_imports_only_its_own_stage_and_stages_below() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = _layer_of(module)
        if own not in LAYERS:
            if module != "vfm_ablate.__init__":
                problems.append(f"{module}: not placed in a layer (add it to LAYERS)")
            continue
        for name in _imports(path):
            if not name.startswith("vfm_ablate"):
                continue
            other = _layer_of(name)
            if other in ("", own) or other not in LAYERS:
                continue
            if LAYERS[other] >= LAYERS[own]:
                problems.append(f"{module} imports {name} (layer {other} is not below {own})")
    assert not problems, "\n".join(problems)


def test_the_trial_engine_never_imports_ray_or_mlflow() -> None:
    offenders = []
    for layer in ENGINE:
        paths = (
            [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else sorted((PACKAGE / layer).rglob("*.py"))
        )
        for path in paths:
            bad = sorted(n for n in _imports(path) if n.split(".")[0] in ("ray", "mlflow"))
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE)}: {bad}")
    assert not offenders, offenders


def test_importing_the_trial_package_loads_neither_ray_nor_mlflow() -> None:
    """(MONAI, which the loss comes from, imports mlflow itself when it is installed, for its MLflow handler: the
    engine therefore imports MONAI only when a trial builds its loss, and this checks every module of the package.)"""
    code = (
        "import pkgutil, importlib, sys, vfm_ablate.trial as t\n"
        "for m in pkgutil.walk_packages(t.__path__, 'vfm_ablate.trial.'): importlib.import_module(m.name)\n"
        "from vfm_ablate.trial import run_trial\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_architecture_doc_lists_every_module_and_nothing_else() -> None:
    import re

    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", doc))
    modules = {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(modules - listed) == [], "modules missing from docs/ARCHITECTURE.md"
    assert sorted(listed - modules) == [], "docs/ARCHITECTURE.md names modules that do not exist"
