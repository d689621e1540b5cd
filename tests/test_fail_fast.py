"""Failing in seconds where MLflow would retry for minutes: an unreachable tracking server stops `run` and `report`
before Ray starts, with a message naming the URI; a server with MLflow's basic-auth app refuses a process without
credentials the same way. A failed `train` keeps an output folder that existed before (and removes only what it
created and left empty: test_bad_inputs.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.mlflow_server import start_mlflow_server, stop_mlflow_server
from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.cli import main
from vfm_ablate.errors import ConfigError
from vfm_ablate.tracking.store import WAIT_ENV, check_tracking_store

ray = pytest.importorskip("ray")

LIMIT_S = 15.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections into its backlog but never answers (a hung server, a stuck proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize("server", ["refused", "silent"])
def test_an_unreachable_tracking_server_fails_in_seconds(
    command: str,
    server: str,
    silent_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WAIT_ENV, "2")  # how long the pre-flight waits for a server to come (default 30 s)
    sweep = tmp_path / "small.yaml"
    sweep.write_text(yaml.safe_dump({"base": tiny_base({"max_epochs": 1}), "datasets": {"sa": TINY_DATA}}))
    uri = f"http://127.0.0.1:{refused_port() if server == 'refused' else silent_port}"
    start = time.monotonic()
    code = main([command, str(sweep), "--tracking-uri", uri])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and took < LIMIT_S, (took, err)
    assert f"MLflow tracking server {uri} is not reachable" in err and "Traceback" not in err
    assert ("timed out" in err) == (server == "silent")
    assert not ray.is_initialized() and sorted(p.name for p in tmp_path.iterdir()) == ["small.yaml"]


def test_other_stores_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"postgresql://u@127\.0\.0\.1:\d+/db: database host is not reachable within"):
        check_tracking_store(f"postgresql://u@127.0.0.1:{refused_port()}/db", wait_s=1, say=lambda _: None)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create .*mlflow\.db \(.*file is not a writable folder\)"):
        check_tracking_store(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    check_tracking_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()


@pytest.mark.slow(seconds=15)
def test_a_basic_auth_server_needs_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's basic-auth app (docs/cluster.md): credentials come from the environment, never a command line."""
    import secrets

    password = secrets.token_urlsafe(16)
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(16)}
    server = start_mlflow_server(tmp_path / "server", extra_args=("--app-name", "basic-auth"), extra_env=env)
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(ConfigError, match=r"refused this process's credentials \(HTTP 401\).*MLFLOW_TRACKING_USER"):
            check_tracking_store(server.uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        check_tracking_store(server.uri)
        from mlflow import MlflowClient

        assert MlflowClient(server.uri).get_experiment_by_name("Default") is not None  # what the check vouched for
    finally:
        stop_mlflow_server(server)


def test_a_failed_train_removes_only_the_folders_it_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from vfm_ablate.data.synthetic import write_folder

    write_folder(tmp_path / "em", "a", 3, 2, (32, 32), 0)
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(tmp_path / "em" / "train" / "images" / "001.png")
    entry = {"layout": "folder", "path": str(tmp_path / "em"), "image_dir": "train/images", "mask_dir": "train/masks"}
    trial = tmp_path / "t.yaml"
    trial.write_text(yaml.safe_dump({**tiny_base({"max_epochs": 1}), "datasets": {"sa": entry}}))
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "runs" / "new" / "deeper", tmp_path / "kept"):
        assert main(["train", "--config", str(trial), "--out", str(out)]) == 2  # fails while loading, inside the trial
        assert "mixed bit depths" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier"]  # new/deeper removed, runs kept
    assert (tmp_path / "kept").is_dir()  # existed before: stays
