"""Property: whatever a user gets wrong, a command that starts nothing ends in seconds, with exit 0 or a clean error
(exit 2, one `error:` line, no traceback). Hypothesis mutates a valid sweep file (wrong types, out-of-range and
non-finite numbers, missing / misspelt / unknown / duplicate keys, odd names, unusable paths), command lines of
`run --dry-run`, `data check` and `data synth`, and the files of a valid dataset (truncated or empty PNG / TIFF,
mismatched sizes, NaN, 3-D stacks, varying alpha, colour, label maps).

Each property runs in this process, derandomised (the same examples on every run, so CI is stable) and bounded
(`max_examples`), well under 60 s together on a busy 2-core machine; every counter-example found is kept as a fixed
case in test_refusals.py / test_bad_inputs.py. A deeper, random search: VFM_ABLATE_PROPERTY_EXAMPLES=500 (examples
per property, new ones on every run).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.sweep_helpers import TINY_DATA, TINY_FACTS, tiny_base
from vfm_ablate.cli import main

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
from hypothesis import HealthCheck, given, settings  # noqa: E402

ray = pytest.importorskip("ray")

LIMIT_S = 30.0  # "in seconds": on an idle machine each example takes well under one
DEEP = int(os.environ.get("VFM_ABLATE_PROPERTY_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=DEEP or 25,
    deadline=None,  # timed below, with the limit above (a busy CI machine varies too much for Hypothesis' own)
    derandomize=not DEEP,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """The command in this process: (exit code, stdout, stderr); any exception other than argparse's exit
    propagates, and fails the property with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    took = time.monotonic() - start
    assert took < LIMIT_S, (argv, took)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, out: str, err: str, argv: list[str]) -> None:
    assert code in (0, 2), (argv, code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, (argv, err)
    if code == 2:
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, (argv, err)
    assert not ray.is_initialized()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VFM_ABLATE_STORAGE_PATH", raising=False)
    (tmp_path / "a_file").write_text("not a folder")
    _warm_up(tmp_path)
    return tmp_path


def _warm_up(folder: Path) -> None:
    """One valid dry run and data check, untimed: the first command of a process imports torch, timm and MLflow's
    helpers, which says nothing about how fast a command refuses its input."""
    path = folder / "warm.yaml"
    path.write_text(yaml.safe_dump(VALID_SWEEP))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["run", str(path), "--dry-run"])
        main(["data", "check", "synthetic_a"])
    path.unlink()


# ------------------------------------------------------------------------------------------------ sweep files

VALID_SWEEP: dict[str, Any] = {
    "name": "prop",
    "base": tiny_base({"max_epochs": 1}),
    "axes": {"regime": ["frozen", "lora"], "optim.lr": [1e-3]},
    "repeats": 1,
    "datasets": {"sa": TINY_DATA},
    "resources": {"cpu": 1, "gpu": 0},
    "run": {"num_cpus": 1},
    "tracking": {"enabled": False},
}
# where mutations land: every key of the valid file and settings it leaves at their defaults
EXTRA_PATHS = [
    "base.seed", "base.split_seed", "base.lora.rank", "base.lora.alpha", "base.alignment.loss", "base.alignment.input",
    "base.data.test", "base.data.target", "base.data.sampling", "base.data.weights", "base.data.val_fraction",
    "base.data.resize.size", "base.data.resize.target", "base.data.resize.policy", "base.optim.batch_size",
    "base.diagnostics.enabled", "axes.seed", "axes.split_seed", "axes.data.train", "axes.lora.rank", "search",
    "search.space", "search.num_samples", "run.max_trials", "run.storage_path", "run.max_concurrent_trials",
    "tracking.uri", "tracking.experiment", "backbones.mine", "datasets.sb", "datasets.sa.size", "datasets.sa.n_train",
    "datasets.sa.layout", "datasets.sa.path", "resources.overrides", "description",
]  # fmt: skip


def _paths(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out += [path, *_paths(value, f"{path}.")]
    return out


PATHS = sorted(set(_paths(VALID_SWEEP)) | set(EXTRA_PATHS))
ODD_STRINGS = [
    "", " ", "mito🧪", "../evil/x", "m" * 300, "frozen", "lora", "sa", "synthetic_a", "vnc", "lucchi_pp", "tiny",
    "/proc/x", "a_file/x", "file:///x", "foo://bar", "sqlite:///:memory:", "http://", "none", "true", "1e-3", "\t",
]  # fmt: skip
scalars = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([10**12, -(10**12), 2**63, 2**32]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(ODD_STRINGS),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["a", "lr", "train", "uniform", "choice", "layout"]), scalars, max_size=2),
    st.just(dict(TINY_FACTS)),
    st.just(dict(TINY_DATA)),
)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(PATHS), values),
        st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
        st.tuples(st.just("misspell"), st.sampled_from(PATHS), st.integers(0, 5)),
        st.tuples(st.just("duplicate"), st.sampled_from(sorted(VALID_SWEEP)), scalars),
    ),
    min_size=1,
    max_size=3,
)


def _parent(data: dict[str, Any], path: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    *parents, leaf = path.split(".")
    node: Any = data
    for part in parents:
        if not isinstance(node, dict):
            return None, leaf
        if part not in node:
            if not create:
                return None, leaf
            node[part] = {}
        node = node[part]
    return (node if isinstance(node, dict) else None), leaf


def mutated_sweep(ops: list[tuple[str, str, Any]]) -> str:
    """The valid sweep file with `ops` applied, as YAML text (duplicates are appended as text: YAML data has none)."""
    data = yaml.safe_load(yaml.safe_dump(VALID_SWEEP))
    tail = []
    for op, path, arg in ops:
        node, leaf = _parent(data, path, create=op == "set")
        if op == "duplicate":
            tail.append(yaml.safe_dump({path: arg}, allow_unicode=True))
        elif node is None:
            continue
        elif op == "set":
            node[leaf] = arg
        elif op == "delete":
            node.pop(leaf, None)
        elif op == "misspell" and leaf in node:
            wrong = (leaf[:arg] + leaf[arg + 1 :]) if arg < len(leaf) else leaf + "s"
            node[wrong or "x"] = node.pop(leaf)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False) + "".join(tail)


@PROPERTY
@given(ops=mutations)
def test_a_mutated_sweep_file_dry_runs_or_is_refused_cleanly(workdir: Path, ops: list) -> None:
    path = workdir / "sweep.yaml"
    path.write_text(mutated_sweep(ops))
    argv = ["run", str(path), "--dry-run"]
    assert_clean(*run_cli(argv), argv)


def test_the_unmutated_sweep_file_is_valid(workdir: Path) -> None:
    path = workdir / "sweep.yaml"
    path.write_text(mutated_sweep([]))
    assert run_cli(["run", str(path), "--dry-run"])[0] == 0


# ------------------------------------------------------------------------------------------------ command lines

NUMBERS = ["-1", "0", "1", "2", "3.5", "nan", "inf", "-inf", "1e400", "99999999999999999999", "x", ""]
PATH_WORDS = ["a_file", "a_file/x", "/proc/x", "missing/none.json", ".", "sweep.yaml", "data"]
RUN_FLAGS = {
    "--num-cpus": NUMBERS, "--max-concurrent-trials": NUMBERS, "--progress-interval": NUMBERS, "--gpus": NUMBERS,
    "--epochs": NUMBERS, "--cluster": PATH_WORDS, "--calibration": PATH_WORDS, "--storage-path": PATH_WORDS,
    "--tracking-uri": ["mlruns", "file:///x", "foo://bar", "sqlite:///:memory:", "http://", "sqlite:///ok.db"],
}  # fmt: skip
CHECK_FLAGS = {
    "--split-seed": NUMBERS,
    "--layout": ["folder", "vnc", "nope", ""],
    "--set": ["mask_dir", "x=1", "=", "mask_labels=[1", "intensity={rule: bits}", "colour=luminance", "a={b: 1, b: 2"],
}
SYNTH_FLAGS = {"--n-train": NUMBERS, "--n-test": NUMBERS, "--seed": NUMBERS, "--domain": ["a", "b", "z"]}


def flag_lists(flags: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    pair = st.sampled_from(sorted(flags)).flatmap(lambda f: st.tuples(st.just(f), st.sampled_from(flags[f])))
    return st.lists(pair, max_size=3).map(lambda pairs: [x for p in pairs for x in p])


@PROPERTY
@given(flags=flag_lists(RUN_FLAGS), extra=st.sampled_from([[], ["--resume"], ["--address", "auto"], ["--verbose"]]))
def test_run_dry_run_flags_run_or_are_refused_cleanly(workdir: Path, flags: list[str], extra: list[str]) -> None:
    path = workdir / "sweep.yaml"
    path.write_text(mutated_sweep([]))
    argv = ["run", str(path), "--dry-run", *extra, *flags]
    assert_clean(*run_cli(argv), argv)


@PROPERTY
@given(
    target=st.sampled_from(["synthetic_a", "vnc", "lucchi", "a_file", "/proc/x", "data", "missing"]),
    flags=flag_lists(CHECK_FLAGS),
)
def test_data_check_flags_check_or_are_refused_cleanly(workdir: Path, target: str, flags: list[str]) -> None:
    argv = ["data", "check", target, *flags]
    assert_clean(*run_cli(argv), argv)


@PROPERTY
@given(
    out=st.sampled_from(["new", "a_file", "a_file/x", "/proc/x"]),
    flags=flag_lists(SYNTH_FLAGS),
    size=st.sampled_from(
        [[], ["--size", "16", "16"], ["--size", "8", "8"], ["--size", "0", "-1"], ["--size", "1e9", "2"]]
    ),
)
def test_data_synth_writes_or_is_refused_cleanly(workdir: Path, out: str, flags: list[str], size: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        target = out if out.startswith("/") or out.startswith("a_file") else str(Path(tmp) / out)
        argv = ["data", "synth", target, *flags, *(size or ["--size", "16", "16"]), "--n-train", "2", "--n-test", "1"]
        argv = argv if "--n-train" not in flags else argv[:-4]  # the drawn counts win
        assert_clean(*run_cli(argv), argv)


# ------------------------------------------------------------------------------------------------ broken files


def _write(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


BREAKAGES = [
    "truncate", "empty", "mismatched_size", "nan_float_tiff", "stack_3d", "varying_alpha", "colour", "label_map",
    "sixteen_bit", "all_zero_mask", "not_an_image", "missing_mask", "bool_image", "huge_values_int32", "one_pixel",
]  # fmt: skip


def break_file(root: Path, breakage: str, index: int, suffix: str) -> None:
    image, mask = root / "images" / f"{index:02d}{suffix}", root / "masks" / f"{index:02d}{suffix}"
    target = image if index % 2 == 0 else mask
    if breakage == "truncate":
        target.write_bytes(target.read_bytes()[: max(1, len(target.read_bytes()) // (3 + index))])
    elif breakage == "empty":
        target.write_bytes(b"")
    elif breakage == "mismatched_size":
        _write(mask, np.zeros((20, 24), np.uint8))
    elif breakage == "nan_float_tiff":
        import tifffile

        image.unlink()
        tifffile.imwrite(image.with_suffix(".tif"), np.full((32, 32), np.nan, np.float32))
    elif breakage == "stack_3d":
        import tifffile

        target.unlink()
        tifffile.imwrite(target.with_suffix(".tif"), np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    elif breakage == "varying_alpha":
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = np.arange(32, dtype=np.uint8)[None, :] * 8
        mask.with_suffix(".png").unlink(missing_ok=True)
        mask.unlink(missing_ok=True)
        Image.fromarray(rgba).save(mask.with_suffix(".png"))
    elif breakage == "colour":
        _write(image, np.dstack([np.full((32, 32), v, np.uint8) for v in (10, 200, 30)]))
    elif breakage == "label_map":
        m = np.zeros((32, 32), np.uint8)
        m[:12] = 128
        m[20:, 10:20] = 255
        _write(mask, m)
    elif breakage == "sixteen_bit":
        _write(image, np.full((32, 32), 40000, np.uint16))
    elif breakage == "all_zero_mask":
        _write(mask, np.zeros((32, 32), np.uint8))
    elif breakage == "not_an_image":
        (root / "images" / "notes.txt").write_text("hello")
    elif breakage == "missing_mask":
        mask.unlink()
    elif breakage == "bool_image":
        Image.fromarray(np.eye(32, dtype=bool)).save(image.with_suffix(".png"))
    elif breakage == "huge_values_int32":
        import tifffile

        image.unlink()
        tifffile.imwrite(image.with_suffix(".tif"), np.full((32, 32), 2**30, np.int32))
    elif breakage == "one_pixel":
        _write(image, np.zeros((1, 1), np.uint8))
        _write(mask, np.zeros((1, 1), np.uint8))


@PROPERTY
@given(
    breakages=st.lists(
        st.tuples(st.sampled_from(BREAKAGES), st.integers(0, 4)), min_size=1, max_size=3, unique_by=lambda b: b[1]
    ),
    suffix=st.sampled_from([".png", ".tif"]),
)
def test_data_check_on_broken_files_reports_or_refuses_cleanly(workdir: Path, breakages: list, suffix: str) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp) / "em"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        for i in range(5):
            _write(root / "images" / f"{i:02d}{suffix}", rng.integers(0, 256, (32, 32), dtype=np.uint8))
            m = np.zeros((32, 32), np.uint8)
            m[8:20, 8:20] = 255
            _write(root / "masks" / f"{i:02d}{suffix}", m)
        for breakage, index in breakages:
            break_file(root, breakage, index, suffix)
        argv = ["data", "check", str(root)]
        code, out, err = run_cli(argv)
        assert_clean(code, out, err, argv)
        if code == 0:
            assert "=> OK" in out
