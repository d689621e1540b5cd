"""A trial's identity covers what it reads: the backbone entry (with its checkpoint file's content) and the dataset
entries (with their files' contents). `--resume` against trials made from other entries names what changed and
refuses; `--rerun-changed` re-runs exactly those trials, keeps their old records and retires their MLflow runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.sweep_helpers import TINY_FACTS as SWEEP_TINY_FACTS
from tests.sweep_helpers import tiny_base
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.synthetic import write_folder
from vfm_ablate.digests import file_digests
from vfm_ablate.errors import ConfigError
from vfm_ablate.models.registry import BackboneEntry
from vfm_ablate.sweep.resume.identity import changed_entries, input_identities
from vfm_ablate.sweep.store import TrialStore

TINY_FACTS = {"name": "mine", **SWEEP_TINY_FACTS}


@pytest.fixture(autouse=True)
def _own_digest_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def em_folder(root: Path) -> DatasetEntry:
    write_folder(root, "a", 4, 2, (32, 32), 0)
    return DatasetEntry(
        name="em",
        layout="folder",
        path=str(root),
        image_dir="train/images",
        mask_dir="train/masks",
        test_image_dir="test/images",
        test_mask_dir="test/masks",
    )


def ids(entry: DatasetEntry) -> dict:
    return input_identities({}, {"em": entry}, frozenset()).datasets["em"]


# ------------------------------------------------------------------------------------------------ identities


def test_a_dataset_is_its_files_contents_not_where_they_lie(tmp_path: Path) -> None:
    entry = em_folder(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # new mtimes, another root: the same data
    copy = entry.model_copy(update={"path": str(tmp_path / "copy")})
    assert ids(copy)["id"] == ids(entry)["id"]
    image = tmp_path / "copy" / "train" / "images" / "001.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)  # same name, same size class, other pixels
    old = input_identities({}, {"em": entry}, frozenset()).to_manifest()
    now = input_identities({}, {"em": copy}, frozenset())
    assert now.datasets["em"]["id"] != old["datasets"]["em"]["id"]
    assert "its files differ (12 files" in changed_entries(old, now)[("dataset", "em")]
    # a changed option is named as such
    now = input_identities({}, {"em": entry.model_copy(update={"pairing": "number"})}, frozenset())
    assert changed_entries(old, now) == {("dataset", "em"): "pairing 'auto' -> 'number'"}


def test_a_checkpoint_is_its_content_hashed_once(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(3)}, ckpt)
    entry = BackboneEntry.model_validate({**TINY_FACTS, "checkpoint": str(ckpt)})
    first = input_identities({"mine": entry}, {}, frozenset({"mine"}))
    random_only = input_identities({"mine": entry}, {}, frozenset())
    assert random_only.backbones["mine"]["file"] is None  # not read when no trial loads it
    assert first.backbones["mine"]["id_random"] == random_only.backbones["mine"]["id_random"]

    stat = ckpt.stat()
    torch.save({"w": torch.ones(3)}, ckpt)  # replaced under the same name (same size)
    assert ckpt.stat().st_size == stat.st_size
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cached = input_identities({"mine": entry}, {}, frozenset({"mine"}))
    # same size and mtime: the cached digest is used, the file is not read again
    assert cached.backbones["mine"]["id_pretrained"] == first.backbones["mine"]["id_pretrained"]
    os.utime(ckpt)  # a real replacement changes the mtime: hashed again
    now = input_identities({"mine": entry}, {}, frozenset({"mine"}))
    assert now.backbones["mine"]["id_pretrained"] != first.backbones["mine"]["id_pretrained"]
    assert now.backbones["mine"]["id_random"] == first.backbones["mine"]["id_random"]
    change = changed_entries(first.to_manifest(), now)[("backbone", "mine")]
    assert change.startswith(f"checkpoint file content changed ({ckpt}, ")
    assert file_digests([ckpt])[ckpt.resolve()][1] == now.backbones["mine"]["file"]["sha256"]


def test_entry_facts_that_change_the_model_are_named(tmp_path: Path) -> None:
    entry = BackboneEntry.model_validate(TINY_FACTS)
    old = input_identities({"mine": entry}, {}, frozenset()).to_manifest()
    bigger = entry.model_copy(update={"model_kwargs": {**TINY_FACTS["model_kwargs"], "depth": 3}})
    assert (
        "model_kwargs"
        in changed_entries(old, input_identities({"mine": bigger}, {}, frozenset()))[("backbone", "mine")]
    )
    moved = entry.model_copy(update={"gpu_fraction_frozen": 0.5})  # scheduling only: the same trial
    assert changed_entries(old, input_identities({"mine": moved}, {}, frozenset())) == {}


def test_stale_attempts_are_closed_not_rewritten(tmp_path: Path) -> None:
    store = TrialStore(str(tmp_path / "s"))
    dead = store.start_attempt("t1", {"pid": 1})
    done = store.start_attempt("t2", {"pid": 2})
    store.end_attempt("t2", done, "FINISHED")
    assert store.close_all_running_attempts("killed") == 1
    [record] = store.attempts("t1")
    assert record["status"] == "KILLED" and record["closed_because"] == "killed" and "end" not in record
    assert [a["status"] for a in store.attempts("t2")] == ["FINISHED"]
    assert dead.endswith(".json")


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.slow(seconds=40)
def test_resume_refuses_changed_entries_and_reruns_only_their_trials(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from vfm_ablate.sweep.driver import run_sweep
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import parse_sweep

    em_folder(tmp_path / "em")
    data = {
        "name": "ident",
        "base": tiny_base({"max_epochs": 1}),
        "axes": {"backbone": ["mine", "tiny_vit_p14"]},
        "backbones": {"mine": {k: v for k, v in TINY_FACTS.items() if k != "name"}},
        "datasets": {
            "sa": {
                "layout": "folder",
                "path": str(tmp_path / "em"),
                "image_dir": "train/images",
                "mask_dir": "train/masks",
                "test_image_dir": "test/images",
                "test_mask_dir": "test/masks",
            }
        },
        "run": {"max_concurrent_trials": 2},
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kwargs = {"storage_path": str(tmp_path / "results"), "tracking_uri": uri, "workdir": tmp_path}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        first = run_sweep(plan(parse_sweep(data, tmp_path / "ident.yaml")), **kwargs)
        assert [t.status for t in first.trials] == ["FINISHED", "FINISHED"]
        mine, other = (t.trial_id for t in first.trials)
        store = TrialStore(first.store_root)
        other_record = store.result(other)

        data["backbones"]["mine"]["model_kwargs"]["depth"] = 3  # the same name, another network
        changed = parse_sweep(data, tmp_path / "ident.yaml")
        with pytest.raises(ConfigError) as refused:
            run_sweep(plan(changed), resume=True, **kwargs)
        message = str(refused.value)
        assert f"1 trial(s) in {first.store_root} were trained" in message and mine in message
        assert "backbone 'mine': model_kwargs" in message and "'depth': 2" in message and "'depth': 3" in message
        assert "--rerun-changed" in message
        assert store.result(mine) is not None and len(store.attempts(mine)) == 1  # refused: nothing touched

        again = run_sweep(plan(changed), resume=True, rerun_changed=True, **kwargs)
        assert [t.status for t in again.trials] == ["FINISHED", "FINISHED"]
        assert store.result(other) == other_record  # unchanged: not trained again
        assert len(store.attempts(other)) == 1
        [attempt] = store.attempts(mine)  # trained again, from scratch; the first attempt moved aside
        assert attempt["status"] == "FINISHED" and not attempt["resumed"]
        assert store.result(mine)["inputs_id"] == attempt["inputs_id"] != other_record["inputs_id"]
        superseded = list((Path(first.store_root) / "trials" / mine / "superseded").glob("*/result.json"))
        assert len(superseded) == 1 and json.loads(superseded[0].read_text())["inputs_id"] != attempt["inputs_id"]

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("ident").experiment_id
        active = client.search_runs([experiment], "tags.`vfm.role` = 'trial'")
        assert sorted(r.data.tags["vfm.trial_id"] for r in active) == sorted([mine, other])
        assert all(r.info.status == "FINISHED" for r in active)
        [new] = [r for r in active if r.data.tags["vfm.trial_id"] == mine]
        assert new.data.tags["vfm.inputs_id"] == attempt["inputs_id"]
        deleted = client.search_runs([experiment], "tags.`vfm.role` = 'trial'", run_view_type=ViewType.DELETED_ONLY)
        assert [r.data.tags["vfm.trial_id"] for r in deleted] == [mine]
        assert deleted[0].data.tags["vfm.superseded"].startswith("inputs changed")

        # a dataset file replaced under the same name: both trials read it, both are named
        image = tmp_path / "em" / "train" / "images" / "000.png"
        pixels = np.asarray(Image.open(image)).copy()
        Image.fromarray(255 - pixels).save(image)
        with pytest.raises(ConfigError, match=r"(?s)2 trial\(s\).*dataset .sa.: its files differ"):
            run_sweep(plan(changed), resume=True, **kwargs)
    finally:
        ray.shutdown()
