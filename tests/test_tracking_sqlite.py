"""The local default store: a SQLite file that many trial processes write at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (imported before forking the writers)
import pytest
from mlflow import MlflowClient

from vfm_ablate.errors import ConfigError, VfmAblateError
from vfm_ablate.tracking.runs import SweepTracker, TrialTracker
from vfm_ablate.tracking.store import default_tracking_uri, sqlite_path

pytestmark = pytest.mark.slow(seconds=2)

N_PROCESSES = 5
N_EPOCHS = 15


def _trial_process(uri: str, parent: str | None, trial_id: str, barrier: object) -> str:
    barrier.wait()  # type: ignore[attr-defined]  # all processes hit the fresh database at the same moment
    tracker = TrialTracker(uri, "concurrent", parent, "sweepS", trial_id, "execS")
    run_id = tracker.open({"seed": trial_id[-1], "backbone": "tiny_vit"})
    for epoch in range(N_EPOCHS):
        tracker.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1), "val_loss": 2.0 / (epoch + 1)})
    tracker.log_final({"macro_iou_fg": 0.1 * int(trial_id[-1])})
    tracker.close("FINISHED")
    return run_id


def test_default_uri_is_absolute_sqlite_in_wal_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("work")
    db = (tmp_path / "work" / "mlflow.db").resolve()
    assert uri == f"sqlite:///{db}"
    assert sqlite_path(uri) == db
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with pytest.raises(ConfigError, match="'\\?'"):
        default_tracking_uri(tmp_path / "odd?name")


def test_concurrent_trial_processes_on_a_fresh_database(tmp_path: Path) -> None:
    """Several processes create the schema, the experiment and their runs at once; nothing is lost or locked."""
    uri = default_tracking_uri(tmp_path / "work")  # file exists (WAL) but has no MLflow tables yet
    # fork after MLflow is imported here (no store opened yet): each child opens its own connections, and the
    # test does not spend its time importing MLflow five times
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(N_PROCESSES)
    started = time.perf_counter()
    with ctx.Pool(N_PROCESSES) as pool:
        run_ids = pool.starmap(_trial_process, [(uri, None, f"trial{i}", barrier) for i in range(N_PROCESSES)])
    elapsed = time.perf_counter() - started
    print(f"{N_PROCESSES} processes x {N_EPOCHS} epochs on fresh SQLite: {elapsed:.1f} s")

    client = MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == "concurrent"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:
        assert run.info.status == "FINISHED"
        index = int(run.data.tags["vfm.trial_id"][-1])
        assert run.data.metrics["macro_iou_fg"] == pytest.approx(0.1 * index)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(N_EPOCHS))
    # artifacts of a local store live beside the database, whatever the trial process's working folder
    assert runs[0].info.artifact_uri.startswith((tmp_path / "work" / "mlartifacts").resolve().as_uri())


def test_sweep_on_sqlite_and_remote_worker_guard(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path / "work")
    sweep = SweepTracker(uri, "local", "grid", "sweepL", "execL")
    parent = sweep.start({"sweep.file": "grid.yaml"})
    trial = TrialTracker(uri, "local", parent, "sweepL", "t0", "execL")
    trial.open({"seed": "0"})
    trial.close("FINISHED")
    sweep.finish()
    client = MlflowClient(uri)
    assert client.get_run(trial.run_id).data.tags["vfm.sweep_run_id"] == parent

    # a worker on another machine sees no database file at the driver's path: refuse instead of forking the store
    elsewhere = f"sqlite:///{tmp_path / 'not-on-this-host' / 'mlflow.db'}"
    with pytest.raises(VfmAblateError, match="another machine"):
        TrialTracker(elsewhere, "local", parent, "sweepL", "t1", "execL").open({"seed": "1"})
    assert not (tmp_path / "not-on-this-host" / "mlflow.db").exists()
