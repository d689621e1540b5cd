"""The MLflow UI in a real browser: a finished sweep's store behind a real `mlflow server` on 127.0.0.1, the
address `vfm-ablate run` prints opened in headless Chromium, every trial's run name and IoU read from the
rendered page (scripts/ui_screenshots.py, which also makes the docs' screenshots)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mlflow_server import start_mlflow_server, stop_mlflow_server
from tests.sweep_helpers import TINY_DATA, tiny_base

pytestmark = pytest.mark.slow(seconds=40)

ray = pytest.importorskip("ray")

from scripts.ui_screenshots import IOU_COLUMN, NAME_COLUMN, find_chromium, shoot  # noqa: E402
from vfm_ablate.sweep.driver import run_sweep  # noqa: E402
from vfm_ablate.sweep.plan import plan  # noqa: E402
from vfm_ablate.sweep.spec import parse_sweep  # noqa: E402

CHROMIUM = find_chromium()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (Debian package `chromium`: apt-get install -y chromium)"
)
def test_every_trial_and_its_iou_is_on_the_rendered_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    sweep = parse_sweep(
        {
            "name": "ui",
            "base": tiny_base({"max_epochs": 1}),
            "axes": {"regime": ["frozen", "lora"], "seed": [0, 1]},
            "datasets": {"sa": TINY_DATA},
            "run": {"max_concurrent_trials": 2},
        },
        tmp_path / "ui.yaml",
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_sweep(plan(sweep), storage_path=str(tmp_path / "results"), tracking_uri=store, workdir=tmp_path)
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert [t.status for t in outcome.trials] == ["FINISHED"] * 4

    # the UI of this store, on the address the run printed (its saved view)
    assert f"mlflow ui --backend-store-uri {store} --port 5000" in printed
    [address] = re.findall(r"trials, by IoU: (\S+)", printed)
    assert address.startswith("http://127.0.0.1:5000/#/experiments/")
    server = start_mlflow_server(tmp_path / "server", backend_uri=store)
    try:
        shot = shoot(CHROMIUM, address.replace("http://127.0.0.1:5000", server.uri), None, 4, tmp_path / "profile")
    finally:
        stop_mlflow_server(server)

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ui")
    runs = client.search_runs([experiment.experiment_id], "tags.`vfm.role` = 'trial'")
    assert len(runs) == 4
    shown = {row[NAME_COLUMN].splitlines()[-1]: row for row in shot.table}  # the cell starts with the run's colour
    assert set(shown) == {r.info.run_name for r in runs}  # every trial, and only trials (no sweep run)
    for run in runs:
        iou = run.data.metrics["iou_fg"]
        assert shown[run.info.run_name][IOU_COLUMN] == (repr(iou) if iou else "0")  # JavaScript's number text
    ious = [float(row[IOU_COLUMN]) for row in shot.table]
    assert ious == sorted(ious, reverse=True)  # the view sorts by IoU, best first
    # the names and columns are what varies (regime, seed): `lora · seed 1`; the backbone, the same for all, is neither
    for run in runs:
        row = shown[run.info.run_name]
        assert run.info.run_name == f"{run.data.params['regime']} · seed {run.data.params['seed']}"
        assert row["params.`regime`"] == run.data.params["regime"] and row["params.`seed`"] == run.data.params["seed"]
        assert "params.`backbone`" not in row
