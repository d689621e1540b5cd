"""cluster.yaml is a valid Ray cluster-launcher config whose GPU workers the autoscaler can launch for GPU trials."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import ray
import yaml

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
    assert any("curl -sf" in c and "/health" in c for c in config["head_start_ray_commands"])  # readiness, no sleep
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])


def _slurm_script() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on a Slurm cluster", 1)[1]
    blocks = [block.split("```", 1)[0] for block in section.split("```bash")[1:]]
    return next(block for block in blocks if "#SBATCH" in block)  # the sbatch script, not the login-node fetch


def test_slurm_recipe_binds_internally_and_polls_instead_of_sleeping(tmp_path: Path) -> None:
    import re
    import subprocess

    script = _slurm_script()
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
    assert "0.0.0.0" not in script
    assert not re.search(r"^\s*sleep \d+\s*$", script, re.MULTILINE), "a fixed sleep instead of a readiness check"
    assert '--host "$head_ip"' in script and "--allowed-hosts" in script and "--dashboard-host=127.0.0.1" in script
    for what in ("the Ray head", "all ${#nodes[@]} Ray nodes", "the MLflow server"):
        assert f'wait_until 300 "{what}"' in script or f'wait_until 600 "{what}"' in script
    # the readiness helper itself: returns at once when ready, ends the job with a message when never ready
    helper = script[script.index("wait_until() {") : script.index("\n}\n") + 3]
    ok = subprocess.run(["bash", "-c", helper + 'wait_until 10 "x" true; echo ready'], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ready"
    never = subprocess.run(
        ["bash", "-c", helper + 'wait_until 5 "the thing" false; echo unreachable'], capture_output=True, text=True
    )
    assert (
        never.returncode == 1 and "the thing is not up after 5 s" in never.stderr and "unreachable" not in never.stdout
    )


def test_no_secret_in_a_committed_recipe() -> None:
    """Passwords, keys and tokens come from the environment or files outside the repository, never a literal."""
    import re

    files = [
        REPO / "README.md",
        REPO / "cluster.yaml",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "sweeps").glob("*.yaml"),
    ]
    literal = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*=(?!\.\.\.|\$|\s|$)[^\s]+|--password[ =]")
    found = [f"{p.name}: {m.group(0)}" for p in files for m in literal.finditer(p.read_text())]
    assert not found
