"""Every command expands its sweep file exactly once and hands that plan on: no module plans again.

The count is taken inside the planner itself (its labelling step, which every expansion runs once), so an
expansion reached through any import path is counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.cli import main
from vfm_ablate.sweep import plan as plan_module


def _sweep_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "once.yaml"
    data = {
        "name": "once",
        "base": tiny_base({"max_epochs": 1, "patience": 1}),
        "axes": {"regime": ["frozen", "lora"]},
        "datasets": {"sa": TINY_DATA},
        "run": {"num_cpus": 2, "progress_interval_s": 0},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = plan_module.label_trials

    def counting(specs, ids, *rest):  # type: ignore[no-untyped-def]
        calls.append(len(specs))
        return real(specs, ids, *rest)

    monkeypatch.setattr(plan_module, "label_trials", counting)
    return calls


def test_dry_run_calibrate_and_fetch_each_expand_the_sweep_once(
    tmp_path: Path, expansions: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep_file(tmp_path)
    cal = tmp_path / "cal.json"
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    commands = {
        "run --dry-run": ["run", str(sweep), "--dry-run"],
        "calibrate --flops": ["calibrate", str(sweep), "-o", str(cal), "--flops", "10"],
        "run --dry-run --calibration": ["run", str(sweep), "--dry-run", "--calibration", str(cal)]
        + ["--tracking-uri", uri],
        "fetch": ["fetch", str(sweep)],
    }
    for name, args in commands.items():
        expansions.clear()
        assert main(args) == 0, name
        assert expansions == [2], f"{name}: expanded {len(expansions)} times"
    capsys.readouterr()


@pytest.mark.slow(seconds=30)
def test_a_sweep_run_expands_once_and_the_driver_never_replans(tmp_path: Path, expansions: list[int]) -> None:
    sweep = _sweep_file(tmp_path, tracking={"enabled": False})
    assert main(["run", str(sweep), "--storage-path", str(tmp_path / "results")]) == 0
    assert expansions == [2]
