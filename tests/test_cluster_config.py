"""cluster.yaml is a valid Ray cluster-launcher config whose GPU workers the autoscaler can launch for GPU trials."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import ray
import yaml

from tests.readme_recipes import slurm_script

REPO = Path(__file__).resolve().parents[1]


def ray_config_validator():
    """Ray's own cluster-config checks (what `ray up` runs) live in a private module. Ray is a dependency, so if
    the module moved the test must fail and be pointed at the new place, not skip and check nothing."""
    try:
        return importlib.import_module("ray.autoscaler._private.util")
    except ImportError as err:
        pytest.fail(
            f"cannot import ray.autoscaler._private.util ({err}): Ray {ray.__version__} moved its cluster-config "
            "validator (prepare_config / validate_config); point this test at the new module"
        )


def test_cluster_yaml_validates_and_declares_gpu_workers() -> None:
    util = ray_config_validator()
    config = util.prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    util.validate_config(config)  # Ray's own schema, as `ray up` checks it
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    # every node installs this package, and the head runs the MLflow server the trials log to
    assert any("pip install" in c and "vfm-ablate" in c for c in config["setup_commands"])
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])
    # the storage path every node writes trial records to is shared (a bucket URI), set once for the plain command
    commands = config["setup_commands"] + config["head_setup_commands"]
    assert any("VFM_ABLATE_STORAGE_PATH=gs://" in c for c in commands)


def test_cluster_onprem_yaml_validates_as_written() -> None:
    """The on-premises config passes Ray's own checks with its CHANGE lines unedited (run for real, edited, by
    tests/test_cluster_onprem.py), and every command is a shell string (a `: ` in a plain YAML scalar makes a map)."""
    util = ray_config_validator()
    raw = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
    util.validate_config(util.prepare_config(raw))
    assert raw["provider"]["type"] == "local" and raw["min_workers"] == len(raw["provider"]["worker_ips"])
    commands = [c for key, value in raw.items() if key.endswith("_commands") for c in value]
    assert commands and all(isinstance(c, str) for c in commands)
    assert any("check_tracking_store" in c and "wait_s=" in c for c in raw["head_start_ray_commands"])


def test_docs_show_the_code_defaults() -> None:
    """docs/cluster.md's annotated sweep file lists `run:` and `tracking:` with the values the code defaults to."""
    from vfm_ablate.sweep.spec import RunSpec, TrackingSpec

    text = (REPO / "docs" / "cluster.md").read_text()
    block = text.split("### Sweep files", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load(block)
    assert documented["run"] == RunSpec().model_dump()
    assert documented["tracking"] == TrackingSpec().model_dump()


def test_cluster_yaml_opens_no_port_and_holds_no_secret() -> None:
    raw = (REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in raw
    config = yaml.safe_load(raw)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    [mlflow] = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    # the internal address (trials) and loopback (SSH port forwarding), only these Host headers
    assert "for host in $ip 127.0.0.1" in mlflow and "--host $host" in mlflow and "--allowed-hosts" in mlflow
    # readiness: the tool's own pre-flight check (what `vfm-ablate run` waits for), polled, never a fixed sleep
    assert any("check_tracking_store" in c and "wait_s=" in c for c in config["head_start_ray_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])


def test_slurm_recipe_binds_internally_and_polls_instead_of_sleeping(tmp_path: Path) -> None:
    import re
    import subprocess

    script = slurm_script()
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
    assert "0.0.0.0" not in script
    assert not re.search(r"^\s*sleep \d+\s*$", script, re.MULTILINE), "a fixed sleep instead of a readiness check"
    assert '--host "$head_ip"' in script and "--allowed-hosts" in script and "--dashboard-host=127.0.0.1" in script
    for what in ("the Ray head", "all ${#nodes[@]} Ray nodes"):
        assert f'wait_until 300 "{what}"' in script or f'wait_until 600 "{what}"' in script
    # MLflow: vfm-ablate's own pre-flight waits for it (the endpoint it checks), one uvicorn worker
    assert "export VFM_ABLATE_TRACKING_WAIT_S=" in script and "/health" not in script and "--workers 1" in script
    assert "${SLURM_GPUS_PER_NODE:-0}" in script  # a CPU-only user deletes the --gpus-per-node line
    # the readiness helper itself: returns at once when ready, ends the job with a message when never ready
    start = script.index("wait_until() {")
    helper = script[start : script.index("\n}\n", start) + 3]
    ok = subprocess.run(["bash", "-c", helper + 'wait_until 10 "x" true; echo ready'], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ready"
    never = subprocess.run(
        ["bash", "-c", helper + 'wait_until 5 "the thing" false; echo unreachable'], capture_output=True, text=True
    )
    assert (
        never.returncode == 1 and "the thing is not up after 5 s" in never.stderr and "unreachable" not in never.stdout
    )


def test_slurm_services_stop_quietly_on_usr1_or_term(tmp_path: Path) -> None:
    """The job's services (Ray nodes, MLflow) run under the recipe's wrapper: USR1 (the job ending them) or TERM (a
    time limit) stops the service with TERM and the wrapper exits 0, so Slurm reports no failed or cancelled step.
    (With srun and real services: tests/test_cluster_slurm.py.)"""
    import re
    import signal
    import subprocess
    import time

    wrapper = re.search(r"bash -c '([^']+)' service", slurm_script())
    assert wrapper, "README's Slurm script: the service wrapper `bash -c '...' service` not found"
    marker = tmp_path / "stopped"
    service = f"trap 'echo TERM > {marker}; exit 0' TERM; sleep 300 & wait"
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen(["bash", "-c", wrapper.group(1), "service", "bash", "-c", service])
        time.sleep(1)
        start = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0 and time.monotonic() - start < 10
        assert marker.read_text().strip() == "TERM"  # the service itself was told to stop
    failing = subprocess.run(["bash", "-c", wrapper.group(1), "service", "bash", "-c", "exit 3"])
    assert failing.returncode == 3  # a service that dies by itself is a failed step, as it should be


def test_no_secret_in_a_committed_recipe() -> None:
    """Passwords, keys and tokens come from the environment or files outside the repository, never a literal."""
    import re

    files = [
        REPO / "README.md",
        REPO / "cluster.yaml",
        REPO / "cluster-onprem.yaml",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "sweeps").glob("*.yaml"),
    ]
    literal = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*=(?!\.\.\.|\$|\s|$)[^\s]+|--password[ =]")
    found = [f"{p.name}: {m.group(0)}" for p in files for m in literal.finditer(p.read_text())]
    assert not found


RECIPES = ("README.md (Slurm)", "cluster.yaml", "cluster-onprem.yaml")


def mlflow_server_commands(recipe: str) -> list[str]:
    """Every command of a committed recipe (one of RECIPES) that starts `mlflow server`."""
    if recipe == RECIPES[0]:
        commands = slurm_script().replace("\\\n", " ").splitlines()
    else:
        commands = yaml.safe_load((REPO / recipe).read_text())["head_start_ray_commands"]
    return [c for c in commands if "mlflow server" in c]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_start_mlflow_without_its_job_runner(recipe: str) -> None:
    """By default `mlflow server` also starts a job runner and eight huey consumers (about 28 CPU-seconds at each
    start, on a head node that also runs Ray and trials); vfm-ablate submits no server-side job."""
    import re

    commands = mlflow_server_commands(recipe)
    assert commands
    for command in commands:
        servers = command.count("mlflow server --backend-store-uri")
        assert servers == 1 and re.search(r"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (nohup )?mlflow server ", command)
