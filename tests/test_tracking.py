"""Sweep/trial tracking against a real `mlflow server` on 127.0.0.1: structure, records, statuses, resume, REST API."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.mlflow_server import MlflowServer
from vfm_ablate.config import DataSpec, LoraSpec, TrialSpec
from vfm_ablate.errors import ConfigError, VfmAblateError
from vfm_ablate.tracking.runs import SweepTracker, TrialTracker

pytestmark = pytest.mark.slow(seconds=2)

FINAL_METRICS = {
    "iou_fg/lucchi_pp": 0.71,
    "iou_fg/vnc": 0.83,
    "macro_iou_fg": 0.77,
    "pooled_iou_fg": 0.74,
    "params/total": 26_000_000.0,
    "params/trainable": 4_271_000.0,
    "params/head": 3_829_000.0,
    "params/lora": 442_000.0,
    "params/trainable_pct": 16.4,
    "epochs_run": 3.0,
    "best_epoch": 2.0,
    "wall_time_s": 12.5,
    "diag/frozen/fd": 79.3,
    "diag/frozen/probe_acc": 1.0,
    "diag/frozen/probe_auc": 1.0,
    "diag/adapted/fd": 45.0,
}


def trial_params(seed: int, regime: str = "lora") -> tuple[str, dict[str, str]]:
    """A real trial's params: TrialSpec.flat_params() plus the runner's backbone facts."""
    spec = TrialSpec(
        backbone="dinov2_vits14_reg",
        regime=regime,
        lora=LoraSpec(rank=16),
        data=DataSpec(train=["lucchi_pp", "vnc"], sampling="balanced"),
        seed=seed,
        split_seed=seed,
    )
    params = spec.flat_params()
    params.update(
        {"backbone.family": "dinov2", "backbone.scale": "S", "backbone.embed_dim": "384", "backbone.params": "22000000"}
    )
    return spec.trial_id(), params


def write_trial_outputs(folder: Path) -> Path:
    """The files the trial engine leaves in its output folder."""
    (folder / "overlays").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"metrics": FINAL_METRICS}))
    (folder / "lora_targets.json").write_text(json.dumps(["blocks.0.attn.qkv", "blocks.0.attn.proj"]))
    (folder / "config.yaml").write_text("trial_id: x\n")
    (folder / "overlays" / "vnc_00.png").write_bytes(b"\x89PNG fake but bytes are bytes")
    (folder / "pca_frozen.png").write_bytes(b"\x89PNG pca")
    (folder / "trainable_checkpoint.pt").write_bytes(b"weights")
    return folder


def trials_of(client: MlflowClient, experiment: str, execution: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [exp.experiment_id], f"tags.`vfm.execution_id` = '{execution}' and tags.`vfm.role` = 'trial'"
    )


def test_sweep_run_trial_runs_records_and_failed_trial(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    sweep = SweepTracker(uri, "exp-structure", "paper-grid", "sweepA", "exec1")
    sweep_run = sweep.start({"sweep.file": "grid.yaml", "sweep.trials": "2"}, tags={"vfm.user_tag": "x"})

    ok_id, ok_params = trial_params(seed=0)
    ok = TrialTracker(uri, "exp-structure", sweep_run, "sweepA", ok_id, "exec1")
    ok_run = ok.open(ok_params, tags={"vfm.sweep_name": "paper-grid"}, run_name="dinov2 · lora (r16) · seed 0")
    for epoch in range(3):
        ok.log_epoch(epoch, {"train_loss": 1.0 - 0.1 * epoch, "val_loss": 1.1 - 0.1 * epoch})
    ok.log_final(FINAL_METRICS)
    ok.log_artifacts(str(write_trial_outputs(tmp_path / "ok")))
    ok.close("FINISHED")

    bad_id, bad_params = trial_params(seed=1)
    bad = TrialTracker(uri, "exp-structure", sweep_run, "sweepA", bad_id, "exec1")
    bad_run = bad.open(bad_params)
    bad.log_epoch(0, {"train_loss": 0.9})
    bad.close("FAILED", error="RuntimeError: CUDA out of memory at epoch 1")

    sweep.reconcile({ok_id: "FINISHED", bad_id: "FAILED"})
    sweep.publish({"trials_finished": 1.0, "best_iou_fg": 0.77}, write_trial_outputs(tmp_path / "summary"))
    sweep.finish("FINISHED")

    client = MlflowClient(uri)
    summary = client.get_run(sweep_run)
    assert summary.info.status == "FINISHED" and summary.data.tags["vfm.role"] == "sweep"
    assert summary.data.metrics["best_iou_fg"] == pytest.approx(0.77)
    assert "metrics.json" in {f.path for f in client.list_artifacts(sweep_run)}
    trials = {r.info.run_id: r for r in trials_of(client, "exp-structure", "exec1")}
    assert set(trials) == {ok_run, bad_run}
    for run in trials.values():
        assert "mlflow.parentRunId" not in run.data.tags  # top level: every trial is a row of the UI's list
        assert run.data.tags["vfm.sweep_run_id"] == sweep_run
        assert run.data.tags["vfm.sweep_id"] == "sweepA"

    good = client.get_run(ok_run)
    assert good.info.run_name == "dinov2 · lora (r16) · seed 0"
    assert good.info.status == "FINISHED"
    assert good.data.tags["vfm.trial_id"] == ok_id
    assert good.data.params == ok_params  # every setting, exactly as given (empty values included)
    for key, value in FINAL_METRICS.items():
        assert good.data.metrics[key] == pytest.approx(value)
    history = client.get_metric_history(ok_run, "train_loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 1.0), (1, 0.9), (2, 0.8)]

    top = {f.path for f in client.list_artifacts(ok_run)}
    assert {
        "metrics.json",
        "lora_targets.json",
        "config.yaml",
        "overlays",
        "pca_frozen.png",
        "trainable_checkpoint.pt",
    } <= top
    assert [f.path for f in client.list_artifacts(ok_run, "overlays")] == ["overlays/vnc_00.png"]
    downloaded = Path(client.download_artifacts(ok_run, "lora_targets.json", str(tmp_path / "dl")))
    assert json.loads(downloaded.read_text()) == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]

    failed = client.get_run(bad_run)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["vfm.error"] == "RuntimeError: CUDA out of memory at epoch 1"
    error_txt = Path(client.download_artifacts(bad_run, "error.txt", str(tmp_path / "dl2")))
    assert "CUDA out of memory" in error_txt.read_text()


def test_resumed_launch_reopens_the_execution_runs_without_duplicates(mlflow_server: MlflowServer) -> None:
    uri = mlflow_server.uri
    trial_id, params = trial_params(seed=3)

    launch1 = SweepTracker(uri, "exp-resume", "grid", "sweepR", "execR")
    sweep_run = launch1.start({"sweep.file": "grid.yaml"})
    first = TrialTracker(uri, "exp-resume", sweep_run, "sweepR", trial_id, "execR", launch1.launch)
    run_id = first.open(params)
    for epoch in range(3):
        first.log_epoch(epoch, {"train_loss": 1.0 - 0.1 * epoch})
    # the driver is interrupted: the trial never closes its run; the launch's end must not leave it RUNNING
    launch1.finish("KILLED")
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    # how it ended, which KILLED cannot say: tags on the execution's run of that trial (and on no other run)
    launch1.tag_trials({trial_id: {"vfm.interrupted": "at epoch 3"}, "0123456789ab": {"vfm.interrupted": "x"}})
    assert client.get_run(run_id).data.tags["vfm.interrupted"] == "at epoch 3"
    assert "vfm.interrupted" not in client.get_run(sweep_run).data.tags
    assert client.get_run(sweep_run).info.status == "KILLED"

    launch2 = SweepTracker(uri, "exp-resume", "grid", "sweepR", "execR")
    assert launch2.start({"sweep.file": "grid.yaml"}) == sweep_run  # one sweep run per execution, every launch
    assert launch2.launch == 2 and client.get_run(sweep_run).data.tags["vfm.launch"] == "2"
    # the resumed trial arrives in a fresh process: the tracker travels pickled, like Ray ships it
    second = pickle.loads(pickle.dumps(TrialTracker(uri, "exp-resume", sweep_run, "sweepR", trial_id, "execR", 2)))
    assert second.open(params) == run_id
    reopened = client.get_run(run_id)
    assert reopened.info.status == "RUNNING"
    assert reopened.data.tags["vfm.attempt"] == "2" and reopened.data.tags["vfm.launch"] == "2"
    # resumed from a checkpoint after the last logged epoch: the history simply continues
    for epoch in range(3, 5):
        second.log_epoch(epoch, {"train_loss": 2.0 + epoch})
    second.log_final({"macro_iou_fg": 0.5})
    second.close("FINISHED")
    launch2.finish("FINISHED")

    runs = trials_of(client, "exp-resume", "execR")
    assert [r.info.run_id for r in runs] == [run_id]
    steps = sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "train_loss"))
    assert steps == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 5.0), (4, 6.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.params == params

    changed = dict(params, **{"optim.lr": "0.1"})
    with pytest.raises(VfmAblateError, match="optim.lr"):
        TrialTracker(uri, "exp-resume", sweep_run, "sweepR", trial_id, "execR").open(changed)


def test_a_fresh_execution_never_writes_into_an_earlier_one(mlflow_server: MlflowServer) -> None:
    """Starting a sweep over (new storage path, same store): same sweep id and trial ids, new execution id."""
    uri = mlflow_server.uri
    trial_id, params = trial_params(seed=8)
    old = SweepTracker(uri, "exp-fresh", "grid", "sweepF", "execOld")
    old_sweep = old.start({})
    first = TrialTracker(uri, "exp-fresh", old_sweep, "sweepF", trial_id, "execOld")
    old_run = first.open(params)
    first.log_epoch(0, {"train_loss": 0.5})
    first.log_final({"iou_fg": 0.4})
    first.close("FINISHED")
    old.finish()
    client = MlflowClient(uri)
    before = client.get_run(old_run)

    new = SweepTracker(uri, "exp-fresh", "grid", "sweepF", "execNew")
    new_sweep = new.start({})
    again = TrialTracker(uri, "exp-fresh", new_sweep, "sweepF", trial_id, "execNew")
    new_run = again.open(params)
    again.log_epoch(0, {"train_loss": 0.3})
    again.log_final({"iou_fg": 0.6})
    again.close("FINISHED")
    new.finish()

    assert new_sweep != old_sweep and new_run != old_run
    after = client.get_run(old_run)
    assert after.data.metrics == before.data.metrics and after.data.tags == before.data.tags
    assert [m.value for m in client.get_metric_history(old_run, "iou_fg")] == [0.4]  # no second value at step 0
    assert [m.value for m in client.get_metric_history(new_run, "train_loss")] == [0.3]
    assert [r.info.run_id for r in trials_of(client, "exp-fresh", "execNew")] == [new_run]


@pytest.mark.parametrize("resume_at", [0, 2])
def test_a_rerun_attempt_replaces_the_killed_attempt_history(mlflow_server: MlflowServer, resume_at: int) -> None:
    """Item: epoch history across attempts. A non-deterministic trial (random losses, as on a GPU) is killed after
    4 epochs; the next attempt restarts at `resume_at` (0: no checkpoint; 2: a checkpoint after epoch 1). The
    curve must be the last attempt's from `resume_at` on, and the epochs before it those the checkpoint holds."""
    uri = mlflow_server.uri
    rng = np.random.default_rng(resume_at)
    experiment, execution = f"exp-attempts-{resume_at}", f"execA{resume_at}"
    trial_id, params = trial_params(seed=11)
    sweep = SweepTracker(uri, experiment, "grid", "sweepA", execution)
    sweep_run = sweep.start({})
    first = TrialTracker(uri, experiment, sweep_run, "sweepA", trial_id, execution)
    old_run = first.open(params, run_name="the trial")
    killed = {e: float(rng.uniform()) for e in range(4)}
    for epoch, value in killed.items():
        first.log_epoch(epoch, {"train_loss": value, "val_loss": value + 1})
    sweep.finish("KILLED")  # driver killed: the attempt never closes

    sweep2 = SweepTracker(uri, experiment, "grid", "sweepA", execution)
    sweep2.start({})
    second = TrialTracker(uri, experiment, sweep_run, "sweepA", trial_id, execution, 2)
    assert second.open(params) == old_run  # found again first ...
    rerun = {e: float(rng.uniform()) for e in range(resume_at, 6)}
    assert all(rerun[e] != killed[e] for e in range(resume_at, 4))  # not deterministic
    for epoch, value in rerun.items():
        second.log_epoch(epoch, {"train_loss": value, "val_loss": value + 1})
    second.log_final({"iou_fg": 0.5})
    second.close("FINISHED")
    sweep2.finish()

    client = MlflowClient(uri)
    [run] = trials_of(client, experiment, execution)  # ... then replaced: one visible run per trial
    assert run.info.run_id == second.run_id != old_run
    assert run.info.run_name == "the trial" and run.data.params == params and run.info.status == "FINISHED"
    expected = {**{e: killed[e] for e in range(resume_at)}, **rerun}
    for key, offset in (("train_loss", 0.0), ("val_loss", 1.0)):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [(e, v + offset) for e, v in sorted(expected.items())]
    old = client.get_run(old_run)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags["vfm.superseded_by"] == run.info.run_id
    assert old.info.status == "KILLED"  # marked as what it is: the interrupted attempt's, replaced by its re-run
    why = old.data.tags["vfm.superseded"]
    assert why.startswith(f"replaced by run {run.info.run_id}: attempt 2 of trial {trial_id} restarted at epoch")
    assert "interrupted" in why and old.data.tags["mlflow.note.content"] == why
    assert "vfm.superseded" not in run.data.tags and "mlflow.note.content" not in run.data.tags


def test_launch_after_a_killed_driver_ends_its_stale_runs(mlflow_server: MlflowServer) -> None:
    uri = mlflow_server.uri
    trial_id, params = trial_params(seed=4)
    launch1 = SweepTracker(uri, "exp-stale", "grid", "sweepS", "execS")
    sweep_run = launch1.start({})
    run_id = TrialTracker(uri, "exp-stale", sweep_run, "sweepS", trial_id, "execS").open(params)
    # driver SIGKILLed: neither finish() nor close() ever runs
    client = MlflowClient(uri)
    assert client.get_run(sweep_run).info.status == "RUNNING"
    launch2 = SweepTracker(uri, "exp-stale", "grid", "sweepS", "execS")
    assert launch2.start({}) == sweep_run
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(sweep_run).info.status == "RUNNING"
    assert TrialTracker(uri, "exp-stale", sweep_run, "sweepS", trial_id, "execS", 2).open(params) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    launch2.finish("FINISHED")
    assert client.get_run(run_id).info.status == "KILLED"  # re-opened but never closed by this launch either


def test_reconcile_ends_runs_of_dead_trials(mlflow_server: MlflowServer) -> None:
    uri = mlflow_server.uri
    sweep = SweepTracker(uri, "exp-reconcile", "grid", "sweepC", "execC")
    sweep_run = sweep.start({})
    (a_id, a_params), (b_id, b_params) = trial_params(seed=5), trial_params(seed=6, regime="frozen")
    a = TrialTracker(uri, "exp-reconcile", sweep_run, "sweepC", a_id, "execC")
    b = TrialTracker(uri, "exp-reconcile", sweep_run, "sweepC", b_id, "execC")
    a_run, b_run = a.open(a_params), b.open(b_params)
    b.close("FINISHED")
    # a's worker died without close(); Ray says it errored
    sweep.reconcile({a_id: "FAILED", b_id: "FAILED"})
    client = MlflowClient(uri)
    assert client.get_run(a_run).info.status == "FAILED"
    assert client.get_run(b_run).info.status == "FINISHED"  # only RUNNING runs are touched
    with pytest.raises(ConfigError, match="DONE"):
        sweep.reconcile({a_id: "DONE"})
    sweep.finish()
    assert client.get_run(sweep_run).info.status == "FINISHED"


def _trial_in_other_process(tracker_bytes: bytes, params: dict[str, str]) -> str:
    tracker = pickle.loads(tracker_bytes)
    run_id = tracker.open(params)
    tracker.log_epoch(0, {"train_loss": 0.5, "val_loss": 0.6})
    tracker.log_final({"macro_iou_fg": 0.42})
    tracker.close("FINISHED")
    return run_id


def test_trial_tracker_works_from_another_process(mlflow_server: MlflowServer) -> None:
    """Like a Ray worker: only the pickled tracker (with its URI) reaches the trial process."""
    uri = mlflow_server.uri
    sweep = SweepTracker(uri, "exp-remote", "grid", "sweepW", "execW")
    sweep_run = sweep.start({})
    trial_id, params = trial_params(seed=7)
    payload = pickle.dumps(TrialTracker(uri, "exp-remote", sweep_run, "sweepW", trial_id, "execW"))
    with mp.get_context("spawn").Pool(1) as pool:
        run_id = pool.apply(_trial_in_other_process, (payload, params))
    sweep.finish()
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["vfm.sweep_run_id"] == sweep_run
    assert run.data.metrics["macro_iou_fg"] == pytest.approx(0.42)


def test_rest_api_lists_runs_with_our_metric_names(mlflow_server: MlflowServer) -> None:
    """What the MLflow UI reads: the server's REST API returns the experiment's runs and their metrics."""
    uri = mlflow_server.uri
    sweep = SweepTracker(uri, "exp-rest", "grid", "sweepX", "execX")
    sweep_run = sweep.start({"sweep.file": "grid.yaml"})
    trial_id, params = trial_params(seed=9)
    trial = TrialTracker(uri, "exp-rest", sweep_run, "sweepX", trial_id, "execX")
    run_id = trial.open(params)
    trial.log_epoch(0, {"train_loss": 0.7, "val_loss": 0.8})
    trial.log_final(FINAL_METRICS)
    trial.close("FINISHED")
    sweep.finish()

    def call(path: str, body: dict | None = None) -> dict:
        url = f"http://127.0.0.1:{mlflow_server.port}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    experiment = call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=exp-rest")["experiment"]
    found = call(
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.`vfm.role` = 'trial'", "max_results": 100},
    )["runs"]
    assert [r["info"]["run_id"] for r in found] == [run_id]
    metric_names = {m["key"] for m in found[0]["data"]["metrics"]}
    assert set(FINAL_METRICS) | {"train_loss", "val_loss"} <= metric_names
    tags = {t["key"]: t["value"] for t in found[0]["data"]["tags"]}
    assert tags["vfm.sweep_run_id"] == sweep_run
    html = urllib.request.urlopen(f"http://127.0.0.1:{mlflow_server.port}/", timeout=30).read()
    assert b"<html" in html.lower() or b"<!doctype html" in html.lower()


def test_misuse_gives_clear_errors(mlflow_server: MlflowServer) -> None:
    with pytest.raises(ConfigError, match="sweep id"):
        SweepTracker(mlflow_server.uri, "exp-bad", "grid", "has space", "e1")
    with pytest.raises(ConfigError, match="execution id"):
        TrialTracker(mlflow_server.uri, "exp-bad", None, "s1", "t1", "no'quote")
    tracker = TrialTracker(mlflow_server.uri, "exp-bad", None, "s1", "t1", "e1")
    with pytest.raises(VfmAblateError, match="before open"):
        tracker.log_epoch(0, {"train_loss": 1.0})
    tracker.open({"seed": "0"})
    with pytest.raises(VfmAblateError, match="'train_loss': expected a number"):
        tracker.log_epoch(0, {"train_loss": "abc"})  # type: ignore[dict-item]
    with pytest.raises(VfmAblateError, match="does not exist"):
        tracker.log_artifacts("/nonexistent/out")
    with pytest.raises(ConfigError, match="RUNNING"):
        tracker.close("RUNNING")
    tracker.close("KILLED")
    assert MlflowClient(mlflow_server.uri).get_run(tracker.run_id).info.status == "KILLED"
