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
    "yaml_text": 0.5,  # between errors and the modules that read YAML
    "validation": 1,
    "overrides": 1,
    "text_tables": 1,
    "digests": 1,
    "metric_names": 1,
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


def _imports(path: Path, typing_only: bool = True) -> set[str]:
    """Absolute names of the modules a file imports anywhere in it (relative imports resolved); without
    `typing_only`, imports under `if TYPE_CHECKING:` (never executed) are left out."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py: its own package)
    found = set()
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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
    listed = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", doc))
    modules = {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(modules - listed) == [], "modules missing from docs/ARCHITECTURE.md"
    assert sorted(listed - modules) == [], "docs/ARCHITECTURE.md names modules that do not exist"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_no_import_cycles_between_modules() -> None:
    """A module graph without cycles reads one way (the spec <-> plan cycle of old is gone): every import that runs,
    module level or inside a function, counts."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in _imports(path, typing_only=False) if m in modules and m != name}
        for name, path in modules.items()
    }
    for name in graph:  # `from . import x` names the package; importing a package runs its __init__ only
        graph[name] = {m for m in graph[name] if not (modules[m].name == "__init__.py" and name.startswith(m + "."))}
    seen: dict[str, int] = {}  # 1 on the path, 2 done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


RAY_INIT = "ray.init"  # the call the rule is about, as code spells it


def test_every_ray_init_names_its_address() -> None:
    """One rule for every ray.init, in the product, the tests and the benchmarks: it names its address ("local"
    for a Ray of its own), so nothing joins a cluster that happens to run on the machine (RAY_ADDRESS, or the
    leftover file of a killed `ray start`)."""
    offenders = []
    for folder in (PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            text = path.read_text()
            trees = [ast.parse(text)]
            trees += [ast.parse(c.value) for c in ast.walk(trees[0]) if _is_code_string(c)]
            for tree in trees:
                for call in ast.walk(tree):
                    if isinstance(call, ast.Call) and ast.unparse(call.func) == RAY_INIT:
                        if not any(k.arg == "address" for k in call.keywords):
                            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {ast.unparse(call)}")
    assert not offenders, offenders


def _is_code_string(node: ast.AST) -> bool:
    """A string constant that is Python code run in another process (calibration's timed snippets)."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and f"{RAY_INIT}(" in node.value):
        return False
    try:
        ast.parse(node.value)
    except SyntaxError:
        return False
    return True
