"""The wheels gpu_check carries to a GPU machine that reaches no network: downloaded here for its Python and
platform, installed there only where the machine lacks the package or has it older."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CARRY_LIMIT_MB = 64.0  # the GPU lease's working tree, carried paths included (.library/device README)

# What the GPU machine lacks, or may have in an older version than this checkout is tested with: distribution ->
# the module it provides. The trial engine, `vfm-ablate calibrate`, `train` and `run --dry-run` need these; Ray
# (240 MB installed), MLflow (69 MB + SQLAlchemy 29 MB) and Optuna are not needed and not carried.
CARRIED = {
    "pydantic": "pydantic",
    "pydantic-core": "pydantic_core",
    "annotated-types": "annotated_types",
    "typing-inspection": "typing_inspection",
    "typing-extensions": "typing_extensions",  # pydantic 2.14 needs >= 4.16
    "monai": "monai",
    "open-clip-torch": "open_clip",
    "ftfy": "ftfy",
    "wcwidth": "wcwidth",
    "timm": "timm",  # DINOv3 needs a recent timm
    "peft": "peft",
}
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014", "manylinux1")
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014", "manylinux1")


def prepare_wheels(dest: Path, python_version: str) -> int:
    """Download the carried wheels for the GPU machine's Python (linux x86-64), at the versions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in CARRIED:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            print(f"error: {dist} is not installed in {sys.executable}: run this with the project's venv")
            return 2
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two stop the whole install there
        old.unlink()
    platforms = [f"{tag}_x86_64" for tag in MANYLINUX]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp"]
    argv += ["--python-version", python_version, "-d", str(dest)]
    argv += [a for p in platforms for a in ("--platform", p)]
    print("downloading", " ".join(pins), f"for CPython {python_version} on linux x86-64 into {dest}", flush=True)
    try:  # pip's own socket timeout bounds each request; this bounds the whole download
        done = subprocess.run([*argv, *pins], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        print("error: the download did not finish within 15 minutes")
        return 1
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        return done.returncode
    wheels = sorted(dest.glob("*.whl"))
    total = 0.0
    for whl in wheels:
        size = whl.stat().st_size / 2**20
        total += size
        print(f"  {whl.name}  {size:.2f} MB")
    found = {_dist_of(w) for w in wheels}
    missing = sorted({_normal(d) for d in CARRIED} - found)
    if missing:
        print(f"error: no wheel for {', '.join(missing)}")
        return 1
    print(
        f"{len(wheels)} wheels, {total:.1f} MB in {dest} (the lease carries {CARRY_LIMIT_MB:g} MB with the working "
        f"tree); run on the GPU machine with carry ['{dest.name}']: python3 benchmarks/gpu_check.py --out DIR"
    )
    return 0


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _dist_of(wheel: Path) -> str:
    return _normal(wheel.name.split("-")[0])


def _version_of_wheel(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def wheels_to_install(wheels: Path) -> tuple[list[Path], list[str]]:
    """The carried wheels this Python lacks or has older (never over a newer one), and a line per decision.
    A carried distribution that is neither here nor in `wheels` is an error naming the preparation command."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    available = {_dist_of(w): w for w in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}
    chosen, lines, absent = [], [], []
    for dist in CARRIED:
        try:
            have: str | None = version(dist)
        except PackageNotFoundError:
            have = None
        whl = available.get(_normal(dist))
        if whl is None:
            if have is None:
                absent.append(dist)
            lines.append(f"{dist}: {have} here, no wheel carried")
        elif have is not None and Version(have) >= Version(_version_of_wheel(whl)):
            lines.append(f"{dist}: {have} here (carried {_version_of_wheel(whl)} not needed)")
        else:
            chosen.append(whl)
            lines.append(f"{dist}: {have or 'missing'} here -> {_version_of_wheel(whl)} from {whl.name}")
    if absent:
        raise SystemExit(
            f"error: {', '.join(absent)} not installed and no wheel in {wheels}: run "
            "`.venv/bin/python benchmarks/gpu_check.py --prepare-wheels` where the network is reachable and carry "
            f"'{wheels.name}' with the working tree"
        )
    return chosen, lines
