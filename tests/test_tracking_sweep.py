"""End to end: a small real sweep (Ray Tune + trial engine) tracked on a real `mlflow server`, then queried back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.sweep_helpers import write_unreadable_dataset
from vfm_ablate.report.runs import load_runs
from vfm_ablate.report.tables import summary_table
from vfm_ablate.sweep.spec import load_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: e2e
datasets:
  syn_a: {layout: synthetic, domain: a, n_train: 4, n_test: 2, size: [32, 32], seed: 3}
  gone: {layout: folder, path: GONE}   # the deliberately failing trial: an unreadable image
base:
  backbone: tiny_vit_p14
  weights: random
  data: {train: [syn_a], resize: {policy: longest_edge, target: 28}}
  optim: {max_epochs: 2, lr: 0.001}
  num_overlays: 1
axes:  # two trials, so both run at once on two CPUs
  - {regime: [lora]}
  - {regime: [frozen], data.train: [[gone]]}
tracking: {experiment: e2e-sweep}
"""


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_sweep_runs_are_complete_and_not_duplicated_on_resume(
    mlflow_server: MlflowServer, ray_local, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vfm_ablate.sweep.driver import run_sweep
    from vfm_ablate.sweep.plan import plan

    sweep_file = tmp_path / "e2e.yaml"
    sweep_file.write_text(SWEEP.replace("GONE", str(write_unreadable_dataset(tmp_path / "gone"))))
    sweep = load_sweep(sweep_file)
    kwargs = {"tracking_uri": mlflow_server.uri, "workdir": tmp_path, "storage_path": str(tmp_path / "ray")}
    first = run_sweep(plan(sweep), progress_interval_s=0, **kwargs)
    printed = capsys.readouterr().out
    assert sorted(t.status for t in first.trials) == ["FAILED", "FINISHED"]
    failed_id = next(t.trial_id for t in first.trials if t.status == "FAILED")
    ok_id = next(t.trial_id for t in first.trials if t.status == "FINISHED")

    # the terminal view without a TTY: per-epoch lines while the trial runs, then one line when it ends
    lines = printed.splitlines()
    epochs = [i for i, line in enumerate(lines) if f"epoch  {ok_id}" in line]
    [done] = [i for i, line in enumerate(lines) if f"done   {ok_id}" in line]
    [start] = [i for i, line in enumerate(lines) if f"start  {ok_id}" in line]
    assert len(epochs) == 2 and start < epochs[0] < epochs[1] < done
    assert "epoch 1/2" in lines[epochs[0]] and "epoch 2/2" in lines[epochs[1]]
    for part in (
        "train 0.",
        "val 0.",
        "best ep 1",
        "patience left",
        "elapsed",
        "if no gain (early stop)",
        "(max epochs)",
    ):
        assert part in lines[epochs[0]], part
    assert sum(f"FAILED {failed_id}" in line for line in lines) == 1

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("e2e-sweep")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    execution = json.loads((tmp_path / "ray" / "e2e" / "sweep.json").read_text())["execution_id"]
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.vfm-{execution}"])
    assert execution in json.loads(view["state"])["searchFilter"]
    # the end of `run` says how to open the UI on this store, with the view's address
    address = f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert f"{address}&viewStateShareKey=vfm-{execution}" in printed

    runs = client.search_runs([experiment.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("vfm.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("vfm.role") == "trial"]
    assert len(sweeps) == 1 and len(children) == 2
    summary = sweeps[0]
    assert summary.info.status == "FAILED"  # one trial failed
    assert summary.data.metrics["trials_finished"] == 1 and summary.data.metrics["trials_failed"] == 1
    ok_iou = next(t.metrics for t in first.trials if t.status == "FINISHED")["iou_fg/syn_a"]
    assert summary.data.metrics["best_iou_fg"] == pytest.approx(ok_iou)
    report = {f.path for f in client.list_artifacts(summary.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/regime_bars.png"} <= report
    assert "results.csv" in {f.path for f in client.list_artifacts(summary.info.run_id)}
    for child in children:
        assert "mlflow.parentRunId" not in child.data.tags
        assert child.data.tags["vfm.sweep_run_id"] == summary.info.run_id
        tid = child.data.tags["vfm.trial_id"]
        spec = next(t.spec for t in first.trials if t.trial_id == tid)
        for key, value in spec.flat_params().items():
            assert child.data.params[key] == value, key
        assert child.data.params["backbone.family"] == "tiny"
        if tid == failed_id:
            assert child.info.status == "FAILED"
            assert child.info.run_name == "frozen · gone"  # what differs between the two trials, nothing else
            assert "gone" in child.data.tags["vfm.error"]
            assert "error.txt" in {f.path for f in client.list_artifacts(child.info.run_id)}
            continue
        assert child.info.status == "FINISHED"
        assert child.info.run_name == "lora · syn_a"
        assert child.data.metrics["iou_fg"] == pytest.approx(child.data.metrics["iou_fg/syn_a"])  # headline
        for name in ("iou_fg/syn_a", "params/total", "params/trainable", "params/head", "params/lora",
                     "params/trainable_pct", "epochs_run", "best_epoch", "wall_time_s",
                     "train_loss", "val_loss"):  # fmt: skip
            assert name in child.data.metrics, name
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss")) == [0, 1]
        artifacts = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "lora_targets.json", "config.yaml", "overlays"} <= artifacts
        assert child.data.metrics["params/lora"] > 0 and child.data.params["lora.rank"] == "16"

    # resume, retrying the failed trial: the same sweep run and trial runs, no duplicates
    second = run_sweep(plan(sweep), resume=True, retry_failed=True, **kwargs)
    assert sorted(t.status for t in second.trials) == ["FAILED", "FINISHED"]
    runs = client.search_runs([experiment.experiment_id])
    children_after = [r for r in runs if r.data.tags.get("vfm.role") == "trial"]
    assert sorted(r.info.run_id for r in children_after) == sorted(r.info.run_id for r in children)
    [summary_after] = [r for r in runs if r.data.tags.get("vfm.role") == "sweep"]
    assert summary_after.info.run_id == summary.info.run_id and summary_after.data.tags["vfm.launch"] == "2"
    retried = next(r for r in children_after if r.data.tags["vfm.trial_id"] == failed_id)
    assert retried.data.tags["vfm.attempt"] == "2" and retried.info.status == "FAILED"
    assert not [r for r in runs if r.info.status == "RUNNING"]

    table = summary_table(load_runs(mlflow_server.uri, "e2e-sweep"))
    row = ("tiny", "tiny", "tiny_vit_p14")
    assert table.cells.loc[row, ("gone", "gone", "frozen", "")] == "failed (1)"
    assert table.cells.loc[row, ("syn_a", "syn_a", "lora", "")].endswith("(1)")
    assert table.cells.shape == (1, 2)

    # starting over elsewhere (the tool's advice for a fresh start): new runs, the first execution's untouched
    before = {r.info.run_id: (r.data.metrics, r.data.tags) for r in runs}
    third = run_sweep(plan(sweep), **{**kwargs, "storage_path": str(tmp_path / "ray2")})
    assert sorted(t.status for t in third.trials) == ["FAILED", "FINISHED"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 6  # 2 trial runs + 1 sweep run per execution
    for run in runs:
        if run.info.run_id in before:
            assert (run.data.metrics, run.data.tags) == before[run.info.run_id]
    fresh = [r for r in runs if r.info.run_id not in before]
    assert {r.data.tags["vfm.execution_id"] for r in fresh} != {execution}
    ok_run = next(r for r in fresh if r.data.tags.get("vfm.trial_id") == ok_id)
    assert sorted(m.step for m in client.get_metric_history(ok_run.info.run_id, "train_loss")) == [0, 1]
