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
