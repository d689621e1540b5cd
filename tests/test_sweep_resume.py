"""Resume after the driver is killed: `vfm-ablate run` is SIGKILLed (with its whole local Ray) once a trial has
finished; `vfm-ablate run --resume` then finishes the sweep. The finished count only grows, no finished trial
trains again (attempt files written by the trials themselves), and MLflow holds one run per trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.sweep_helpers import TINY_DATA, tiny_base

pytestmark = pytest.mark.slow(seconds=65)

SWEEP = {
    "name": "resumable",
    "base": tiny_base({"max_epochs": 2}),
    "axes": {"regime": ["frozen", "lora"]},
    "repeats": 2,
    "datasets": {"sa": TINY_DATA},
    "run": {"num_cpus": 2, "max_concurrent_trials": 1},
}


def finished(trials: Path) -> set[str]:
    return {p.parent.name for p in trials.glob("*/result.json")}


def attempts(trials: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in trials.glob("*/attempts/*.json"):
        out.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group and every process it started (Ray workers run in their own groups)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vfm_ablate", "run", *args]


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    sweep_file = tmp_path / "resumable.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP))
    trials = tmp_path / "ray_results" / "resumable" / "trials"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first_log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(
        cli(str(sweep_file)), cwd=tmp_path, env=env, stdout=first_log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 400
        while not finished(trials) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        kill_tree(driver)
        first_log.close()
    before = finished(trials)
    log = (tmp_path / "first.log").read_text()
    assert 1 <= len(before) < 4, f"expected a kill mid-way; finished {before}\n{log[-3000:]}"
    runs_before = attempts(trials)

    resumed = subprocess.run(
        cli(str(sweep_file), "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = finished(trials)
    assert before <= after and len(after) == 4
    runs_after = attempts(trials)
    for tid in before:  # finished before the kill: never trained again
        assert runs_after[tid] == runs_before[tid]
        assert [a["status"] for a in runs_after[tid]] == ["FINISHED"]
    for tid, runs in runs_after.items():  # every trial finished exactly once
        assert [a["status"] for a in runs].count("FINISHED") == 1, (tid, runs)
    # attempts the SIGKILL cut short are closed as KILLED (no end time: unknown); none stays RUNNING
    cut = {(tid, a["start"]) for tid, runs in runs_before.items() for a in runs if a["status"] == "RUNNING"}
    closed = {(tid, a["start"]): a for tid, runs in runs_after.items() for a in runs}
    assert all(closed[key]["status"] == "KILLED" and "end" not in closed[key] for key in cut)
    assert not [a for runs in runs_after.values() for a in runs if a["status"] == "RUNNING"]
    assert "4 finished" in resumed.stdout
    # max_concurrent_trials: 1 is honoured although Ray has 2 CPUs for 1-CPU trials
    spans = sorted((a["start"], a["end"]) for runs in runs_after.values() for a in runs if "end" in a)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resumable")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`vfm.role` = 'trial'")
    assert sorted(r.data.tags["vfm.trial_id"] for r in runs) == sorted(after)
    assert all(r.info.status == "FINISHED" for r in runs)
    [summary] = client.search_runs([experiment.experiment_id], filter_string="tags.`vfm.role` = 'sweep'")
    # one sweep run for the execution, reopened by the resume (after ending what the killed launch left RUNNING)
    assert summary.info.status == "FINISHED" and summary.data.tags["vfm.launch"] == "2"
    assert summary.data.metrics["trials_finished"] == 4
    # the frozen trials' backbone passes and store reads, summed over both launches' trials
    frozen = [r.data.metrics for r in runs if "backbone_extractions" in r.data.metrics]
    assert len(frozen) == 2 and summary.data.metrics["backbone_extractions"] > 0
    for key in ("backbone_extractions", "feature_store_hits"):
        assert summary.data.metrics[key] == sum(m.get(key, 0.0) for m in frozen), key
