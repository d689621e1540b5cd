"""README's Slurm recipe, run for real: Debian's Slurm (single node, CPU only) runs the batch script taken from
README.md, changed only where a user must (paths, one node, its CPUs, the GPU line deleted, the demo sweep, with 3x
its epochs and one trial at a time so that a time-limit cut finds trials running).

One flow, three submissions of the same script:
1. cut at its time limit while trials run (the limit lowered once a trial has finished, as `scontrol update` lets a
   user do): the job ends TIMEOUT with some trials finished and one interrupted;
2. resubmitted: every trial FINISHED, one MLflow run per trial in the server's store, the interrupted attempt's run
   marked as replaced by its re-run; the job exits 0 and its log holds no Slurm or Ray error;
3. resubmitted again: nothing re-runs, `results.csv` is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import netns, slurm_cluster
from tests.readme_recipes import REPO, adapt, slurm_script
from vfm_ablate.tracking.tags import (
    ATTEMPT_TAG,
    RETIRED_TAG,
    ROLE_TAG,
    ROLE_TRIAL,
    SUPERSEDED_TAG,
    TRIAL_ID_TAG,
)

pytestmark = [pytest.mark.slow(seconds=270), pytest.mark.timeout(2400)]

TRIALS = 16  # sweeps/demo.yaml
JOB_TIMEOUT_S = 900
NOISE = ("srun: error", "CANCELLED", "Traceback", "RpcError", "Killed", "INFO authentication_token")


@pytest.fixture
def slurm() -> Iterator[slurm_cluster.SlurmCluster]:
    reason = slurm_cluster.unavailable() or netns.unavailable()
    if reason:
        pytest.skip(reason)
    sandbox = netns.Sandbox()
    cluster = None
    try:
        cluster = slurm_cluster.start_slurm(sandbox)
        yield cluster
    finally:
        sandbox.close()
        if cluster is not None:
            shutil.rmtree(cluster.root, ignore_errors=True)


def user_script(work: Path, cpus: int) -> str:
    """README's script with a user's edits: where things are, one node and its CPUs, CPU only, the demo sweep."""
    return adapt(
        slurm_script(),
        {
            "#SBATCH --nodes=4 ": "#SBATCH --nodes=1 ",
            "#SBATCH --gpus-per-node=4              # CPU-only: delete this line\n": "",
            "#SBATCH --cpus-per-task=32": f"#SBATCH --cpus-per-task={cpus}",
            "#SBATCH --time=24:00:00": "#SBATCH --time=15",
            "REPO=/shared/$USER/vfm-ablate ": f"REPO={REPO} ",
            "WORK=/shared/$USER/vfm-runs ": f"WORK={work / 'shared'} ",
            "VFM_ABLATE_DATA_ROOT=/shared/$USER/em-data ": f"VFM_ABLATE_DATA_ROOT={work / 'data'} ",
            "HF_HOME=/shared/$USER/hf-cache ": f"HF_HOME={work / 'hf'} ",
            "sweeps/main_table.yaml": str(slow_demo(work)),
        },
    )


def slow_demo(work: Path) -> Path:
    """The demo sweep with 3x its epochs, one trial at a time: on an idle machine the demo's 16 trials end in about
    half a minute, within one of Slurm's 30 s time-limit checks, and the cut would find nothing left to interrupt.
    One at a time, the trials take longer for the same CPU time (the suite runs beside it on 2 cores)."""
    data = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    data["base"]["optim"]["max_epochs"] = 3 * data["base"]["optim"]["max_epochs"]
    data["run"]["max_concurrent_trials"] = 1
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trial_records(work: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """(finished trial -> result.json, trial -> its attempt records) from the sweep's storage."""
    trials = work / "shared" / "ray_results" / "demo" / "trials"
    results, attempts = {}, {}
    for folder in sorted(trials.iterdir()) if trials.is_dir() else []:
        if (folder / "result.json").is_file():
            results[folder.name] = json.loads((folder / "result.json").read_text())
        attempts[folder.name] = [json.loads(p.read_text()) for p in sorted((folder / "attempts").glob("*.json"))]
    return results, attempts


def submit(slurm: slurm_cluster.SlurmCluster, work: Path, env: dict[str, str]) -> tuple[int, float]:
    return slurm.sbatch(work / "job.sh", env, work), time.monotonic()


def finish(slurm: slurm_cluster.SlurmCluster, job: int, work: Path, started: float) -> tuple[dict[str, str], str]:
    fields = slurm.wait(job, JOB_TIMEOUT_S)
    log = (work / f"vfm-ablate-{job}.log").read_text(errors="replace")
    print(f"job {job}: {fields['JobState']} exit {fields['ExitCode']} run {fields['RunTime']}, "
          f"{time.monotonic() - started:.0f} s submit to end")  # fmt: skip
    return fields, log


def cut_at_time_limit(slurm: slurm_cluster.SlurmCluster, job: int, work: Path, started: float) -> None:
    """Once a trial has finished and another runs, lower the job's time limit to what has already passed: Slurm
    ends it at its next time-limit check (every 30 s), exactly as at a real limit (SIGTERM, then SIGKILL)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        results, attempts = trial_records(work)
        running = [t for t, a in attempts.items() if any(x["status"] == "RUNNING" for x in a) and t not in results]
        if results and running:
            minutes = max(1, int((time.monotonic() - started) // 60))
            slurm.client("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}")
            return
        if slurm.job(job)["JobState"] not in ("PENDING", "RUNNING"):
            log = (work / f"vfm-ablate-{job}.log").read_text(errors="replace")
            raise AssertionError(f"job {job} ended before a trial finished:\n{log[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"no trial finished in job {job} within {JOB_TIMEOUT_S} s")


def trial_runs(tracking_uri: str) -> list:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]


def test_readme_slurm_recipe_survives_its_time_limit_and_ends_quietly(
    slurm: slurm_cluster.SlurmCluster, tmp_path: Path
) -> None:
    work = tmp_path
    (work / "home").mkdir()
    (work / "tmp").mkdir()
    (work / "job.sh").write_text(user_script(work, cpus=min(2, slurm.cpus)))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(work / "home"),  # ~/.ray/auth_token: generated by the job, as on a fresh account
        "TMPDIR": str(slurm.root / "t"),  # Ray's session folder: short (socket paths), removed with the cluster
        "USER": os.environ.get("USER", "root"),
        "LANG": "C.UTF-8",
    }
    (slurm.root / "t").mkdir()

    # 1. cut at its time limit while trials run
    job, started = submit(slurm, work, env)
    cut_at_time_limit(slurm, job, work, started)
    fields, log = finish(slurm, job, work, started)
    assert fields["JobState"] == "TIMEOUT", log[-4000:]
    done_before, attempts = trial_records(work)
    interrupted = {t for t, a in attempts.items() if t not in done_before}
    assert 0 < len(done_before) < TRIALS and interrupted, (sorted(done_before), attempts)
    print(f"cut: {len(done_before)} trials finished, {len(interrupted)} interrupted")

    # 2. resubmitted: every trial finishes, one MLflow run each; quiet, exit 0
    job, started = submit(slurm, work, env)
    fields, log = finish(slurm, job, work, started)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    noise = [line for line in log.splitlines() if any(word in line for word in NOISE)]
    assert not noise, "\n".join(noise)
    results, attempts = trial_records(work)
    assert len(results) == TRIALS
    for tid in done_before:  # kept, not re-run
        assert results[tid] == done_before[tid] and len(attempts[tid]) == 1
    for tid in interrupted:  # the attempt cut by the limit, closed by the next launch, then one that finished
        statuses = [a["status"] for a in attempts[tid]]
        assert statuses[-1] == "FINISHED" and "KILLED" in statuses[:-1], (tid, statuses)
    csv = work / "shared" / "ray_results" / "demo" / "results.csv"
    rows = csv.read_text().splitlines()
    assert len(rows) == TRIALS + 1 and all(",FINISHED," in row for row in rows[1:]), rows[:3]

    runs = trial_runs(f"sqlite:///{work / 'shared' / 'mlflow.db'}")
    active = [r for r in runs if r.info.lifecycle_stage == "active"]
    by_trial = {}
    for run in active:
        by_trial.setdefault(run.data.tags[TRIAL_ID_TAG], []).append(run)
    assert sorted(by_trial) == sorted(results) and all(len(v) == 1 for v in by_trial.values())
    assert all(v[0].info.status == "FINISHED" for v in by_trial.values())
    replaced = [r for r in runs if r.info.lifecycle_stage == "deleted"]
    for run in replaced:  # an interrupted attempt's own run: ended, pointing at its re-run, and saying why
        successor = by_trial[run.data.tags[TRIAL_ID_TAG]][0].info.run_id
        assert run.data.tags[TRIAL_ID_TAG] in interrupted and run.info.status == "KILLED", run.data.tags
        assert run.data.tags[SUPERSEDED_TAG] == successor
        assert run.data.tags[RETIRED_TAG].startswith(f"replaced by run {successor}: attempt ")
    for tid in interrupted:  # either its run was re-opened (no epoch logged before the cut) or replaced
        kept = by_trial[tid][0]
        assert int(kept.data.tags[ATTEMPT_TAG]) >= 2 or any(r.data.tags[TRIAL_ID_TAG] == tid for r in replaced)
    print(f"interrupted {sorted(interrupted)}; replaced runs {len(replaced)}")

    # 3. resubmitted again: nothing re-runs
    before = csv.read_bytes()
    job, started = submit(slurm, work, env)
    fields, log = finish(slurm, job, work, started)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert trial_records(work)[1] == attempts and csv.read_bytes() == before
