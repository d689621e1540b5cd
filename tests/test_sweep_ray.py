"""A real local Ray (2 CPUs): an Optuna + ASHA search sweep with MLflow tracking, and a trial whose worker
process is killed mid-training and continues from its last checkpoint.

Optuna samples inside the declared bounds, ASHA may stop trials early, MLflow gets one child run per trial with
the status Ray gave it, and trials ask for no GPU on a cluster without GPUs. (Failures: test_sweep_multinode.py;
a killed driver: test_sweep_resume.py.)
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tests.sweep_helpers import TINY_DATA, tiny_base  # noqa: E402
from vfm_ablate.sweep.driver import run_sweep  # noqa: E402
from vfm_ablate.sweep.plan import plan  # noqa: E402
from vfm_ablate.sweep.spec import parse_sweep  # noqa: E402
from vfm_ablate.sweep.store import TrialStore  # noqa: E402

pytestmark = pytest.mark.slow(seconds=25)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_search_sweep_samples_stops_and_tracks(
    local_ray: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    sweep = parse_sweep(
        {
            "name": "search",
            "base": tiny_base({"max_epochs": 2}, regime="lora"),
            "search": {
                "num_samples": 3,
                "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "lora.alpha": {"uniform": [8, 64]}},
                "asha": {"grace_period": 1, "reduction_factor": 2},
            },
            "datasets": {"sa": TINY_DATA},
            "run": {"max_concurrent_trials": 2},
        },
        tmp_path / "search.yaml",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(
        plan(sweep), storage_path=str(tmp_path / "results"), tracking_uri=uri, workdir=tmp_path, progress_interval_s=0
    )
    printed, errors = capfd.readouterr()
    assert "A new study created" not in printed + errors  # Optuna's own log lines only with --verbose

    assert not outcome.interrupted
    assert len(outcome.trials) == 3
    assert {t.status for t in outcome.trials} <= {"FINISHED", "STOPPED"}
    finished = [t for t in outcome.trials if t.status == "FINISHED"]
    assert finished, "the first trial to reach an ASHA rung is never stopped"
    for t in finished:
        assert math.isfinite(t.metrics["iou_fg/sa"]) and t.metrics["epochs_run"] == 2
    # Optuna sampled inside the declared bounds, a different point per trial, and the trial ran with it
    lrs = [t.sampled["optim.lr"] for t in outcome.trials]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 3

    # durable records; no GPU asked on a GPU-less cluster although the tiny entries ask for a fraction
    store = TrialStore(outcome.store_root)
    assert "no GPUs" in printed
    for t in outcome.trials:
        [attempt] = store.attempts(t.trial_id)
        assert attempt["gpu"] == 0
        assert attempt["status"] == ("FINISHED" if t.status == "FINISHED" else "KILLED")  # ASHA stops it mid-way
    assert (Path(outcome.store_root) / "results.csv").read_text().count("\n") == 4
    assert "best iou_fg" in printed and "results of sweep 'search'" in printed

    # MLflow: one child run per trial with Ray's verdict (ASHA-stopped -> KILLED), per-epoch and final metrics
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("search")
    runs = client.search_runs([experiment.experiment_id])
    children = {r.data.tags["vfm.trial_id"]: r for r in runs if r.data.tags.get("vfm.role") == "trial"}
    assert len(children) == 3 == len([r for r in runs if r.data.tags.get("vfm.role") == "trial"])
    want = {"FINISHED": "FINISHED", "STOPPED": "KILLED"}
    assert {tid: r.info.status for tid, r in children.items()} == {t.trial_id: want[t.status] for t in outcome.trials}
    for t in finished:
        run = children[t.trial_id]
        assert run.data.metrics["iou_fg/sa"] == pytest.approx(t.metrics["iou_fg/sa"])
        assert run.data.params["optim.lr"] == str(t.sampled["optim.lr"])
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    [summary] = [r for r in runs if r.data.tags.get("vfm.role") == "sweep"]
    assert summary.info.status == "FINISHED"

    # each run is named by its sampled values (all else is the same); ASHA's stops say so, apart from interruptions
    for t in outcome.trials:
        run = children[t.trial_id]
        assert run.info.run_name == f"lr {_short(t.sampled['optim.lr'])} α {_short(t.sampled['lora.alpha'])}"
        assert "vfm.interrupted" not in run.data.tags
        # and the trial ran with them
        assert run.data.params["optim.lr"] == str(t.sampled["optim.lr"])
        assert run.data.params["lora.alpha"] == str(t.sampled["lora.alpha"])
    stopped = [t for t in outcome.trials if t.status == "STOPPED"]
    assert stopped, "seeded samples: ASHA stops at least one trial at its first rung"
    for t in stopped:
        # ASHA's rungs (grace 1, factor 2, max_t = 2 epochs + the test report) are epochs 1 and 2
        assert t.ended in ("stopped by ASHA at epoch 1", "stopped by ASHA at epoch 2") and t.ended in printed
        at = t.ended.removeprefix("stopped by ")
        assert children[t.trial_id].data.tags["vfm.stopped_by"] == at
        assert f"stopped {t.trial_id} by {at}" in printed  # the live view
    # phases reached the view, through the board: tune.report still came once per epoch (+ the final report)
    # (the view takes each trial's latest phase once a second: a phase shorter than that may be passed over)
    assert re.search(r"phase  \w{12}  (loading data|building model|training epoch \d|testing)", printed)
    from ray import tune

    for path in outcome.experiment_paths:
        for trial in tune.ExperimentAnalysis(path).trials:
            result = trial.last_result
            if result.get("trial_done"):
                assert result["training_iteration"] == result["epochs_run"] + 1


def _short(value: float) -> str:
    from vfm_ablate.sweep.labels import sampled_text

    return sampled_text({"x": value}).split(" ", 1)[1]


def test_a_trial_whose_worker_dies_continues_from_its_checkpoint(local_ray: None, tmp_path: Path) -> None:
    """A lost worker (pre-empted node, OOM-killed process): max_failures retries the trial from its checkpoint."""
    from mlflow import MlflowClient

    sweep = parse_sweep(
        {
            "name": "retry",
            "base": tiny_base({"max_epochs": 6, "patience": 100}),
            "datasets": {"sa": TINY_DATA},
            "run": {"max_failures": 1, "checkpoint_min_interval_s": 0},
        },
        tmp_path / "retry.yaml",
    )
    results = tmp_path / "results" / "retry"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed: list[int] = []

    def kill_worker_after_two_checkpoints() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            attempts = list(results.glob("trials/*/attempts/*.json"))
            if attempts and list(results.glob("tune/*/checkpoint_000001")):
                pid = json.loads(attempts[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_worker_after_two_checkpoints, daemon=True)
    killer.start()
    outcome = run_sweep(plan(sweep), storage_path=str(tmp_path / "results"), tracking_uri=uri, workdir=tmp_path)
    killer.join(timeout=10)

    assert killed, "the worker was never seen with two checkpoints"
    [trial] = outcome.trials
    assert trial.status == "FINISHED" and trial.metrics["epochs_run"] == 6
    first, second = sorted(TrialStore(outcome.store_root).attempts(trial.trial_id), key=lambda a: a["start"])
    assert first["pid"] == killed[0]  # died without a word; the retry closed its record
    assert first["status"] == "KILLED" and "end" not in first and "later attempt" in first["closed_because"]
    assert second["resumed"] and second["status"] == "FINISHED"
    assert 1 <= second["epochs_run"] <= 5, "the retry continued from a checkpoint instead of starting over"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("retry").experiment_id], "tags.`vfm.role` = 'trial'")
    assert run.info.status == "FINISHED" and run.data.tags["vfm.attempt"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(6))


def test_a_trial_that_diverges_mid_training_fails_alone_with_its_error(local_ray: None, tmp_path: Path) -> None:
    """Non-finite loss at epoch k >= 1 inside a real sweep: that trial is FAILED with NonFiniteLossError (store,
    outcome, MLflow) after reporting its first k epochs; the other trials finish.

    The divergence is real, not injected: with lr 1 and weight decay 11, AdamW multiplies every weight by
    (1 - lr * weight_decay) = -10 per step, so within a few epochs the activations overflow and the loss is NaN.
    """
    from mlflow import MlflowClient

    sweep = parse_sweep(
        {
            "name": "diverge",
            "base": tiny_base({"max_epochs": 6, "patience": 100}),
            "axes": [{"seed": [0, 1]}, {"optim.lr": [1.0], "optim.weight_decay": [11.0]}],
            "datasets": {"sa": TINY_DATA},
            "run": {"max_concurrent_trials": 2},
        },
        tmp_path / "diverge.yaml",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(plan(sweep), storage_path=str(tmp_path / "results"), tracking_uri=uri, workdir=tmp_path)

    [failed] = [t for t in outcome.trials if t.status == "FAILED"]
    finished = [t for t in outcome.trials if t.status == "FINISHED"]
    assert failed.planned.spec.optim.weight_decay == 11.0 and len(finished) == 2
    match = re.search(r"NonFiniteLossError: .*nan at epoch (\d+)", failed.error or "")
    assert match, failed.error
    k = int(match.group(1))
    assert k >= 1, "the loss must turn non-finite mid-training, after at least one finished epoch"
    [attempt] = TrialStore(outcome.store_root).attempts(failed.trial_id)
    assert attempt["status"] == "FAILED" and attempt["epochs_run"] == k
    assert "NonFiniteLossError" in attempt["error"] and "NonFiniteLossError" in attempt["traceback"]
    for t in finished:
        assert t.metrics["epochs_run"] == 6 and math.isfinite(t.metrics["iou_fg/sa"])

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("diverge").experiment_id], "tags.`vfm.role` = 'trial'")
    by_trial = {r.data.tags["vfm.trial_id"]: r for r in runs}
    assert {tid: r.info.status for tid, r in by_trial.items()} == {
        t.trial_id: "FAILED" if t is failed else "FINISHED" for t in outcome.trials
    }
    failed_run = by_trial[failed.trial_id]
    assert "NonFiniteLossError" in failed_run.data.tags["vfm.error"]
    assert [m.step for m in client.get_metric_history(failed_run.info.run_id, "val_loss")] == list(range(k))
