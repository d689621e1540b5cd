"""One feature extraction per sweep: the shared feature store under the sweep's storage path.

Concurrent misses of the same image extract it once (claims), nothing torn is ever read, and in a real local Ray
with 2 CPUs a frozen sweep with repeats x datasets extracts each distinct image once across both workers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from vfm_ablate.sweep.feature_store import SweepFeatureStore


def test_trials_missing_the_same_image_at_once_extract_it_once(tmp_path: Path) -> None:
    calls = []
    barrier = threading.Barrier(4)
    results: list[tuple[torch.Tensor, bool]] = []

    def extract() -> torch.Tensor:
        calls.append(threading.get_ident())
        time.sleep(0.3)  # a slow backbone pass: the others find the claim and wait
        return torch.arange(6.0).reshape(1, 2, 3)

    def trial() -> None:
        store = SweepFeatureStore(str(tmp_path / "sweep"))  # one per trial: its own owner id, as on another node
        barrier.wait()
        results.append(store.get_or_extract("fp", "ab" * 20, extract))

    threads = [threading.Thread(target=trial) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sum(extracted for _, extracted in results) == 1
    assert all(torch.equal(feats, torch.arange(6.0).reshape(1, 2, 3)) for feats, _ in results)
    stored = list((tmp_path / "sweep" / "features" / "fp").rglob("*"))
    assert [p.name for p in stored if p.is_file()] == ["ab" * 20 + ".pt"]  # no claim or temp file left behind


def test_a_claim_whose_owner_died_is_taken_over(tmp_path: Path) -> None:
    dead = SweepFeatureStore(str(tmp_path), claim_timeout_s=0.5)
    claim = tmp_path / "features" / "fp" / "cd" / ("cd" * 20 + ".pt.claim")
    claim.parent.mkdir(parents=True)
    claim.write_text(f'{{"owner": "another-node-1", "time": {time.time()}}}')
    started = time.monotonic()
    feats, extracted = dead.get_or_extract("fp", "cd" * 20, lambda: torch.ones(2))
    assert extracted and torch.equal(feats, torch.ones(2))
    assert 0.4 < time.monotonic() - started < 5  # waited for the claim to go stale, then extracted
    assert not claim.exists()


def test_a_claim_of_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    """A killed launch leaves its claims behind; its resume must not wait out the 10-minute claim timeout."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    claim = tmp_path / "features" / "fp" / "ab" / ("ab" * 20 + ".pt.claim")
    claim.parent.mkdir(parents=True)
    claim.write_text(f'{{"owner": "x", "host": "{socket.gethostname()}", "pid": {pid}, "time": {time.time()}}}')
    started = time.monotonic()
    feats, extracted = SweepFeatureStore(str(tmp_path)).get_or_extract("fp", "ab" * 20, lambda: torch.ones(1))
    assert extracted and time.monotonic() - started < 5 and not claim.exists()


def test_a_failed_extraction_releases_its_claim(tmp_path: Path) -> None:
    store = SweepFeatureStore(str(tmp_path))

    def broken() -> torch.Tensor:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.get_or_extract("fp", "ef" * 20, broken)
    feats, extracted = SweepFeatureStore(str(tmp_path)).get_or_extract("fp", "ef" * 20, lambda: torch.zeros(1))
    assert extracted and torch.equal(feats, torch.zeros(1))


@pytest.mark.slow(seconds=20)
def test_frozen_sweep_extracts_each_distinct_image_once_across_two_ray_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ray = pytest.importorskip("ray")
    from tests.sweep_helpers import TINY_DATA, TINY_FACTS, tiny_base
    from vfm_ablate.models.backbones import build_backbone
    from vfm_ablate.models.registry import get_entry
    from vfm_ablate.sweep.driver import run_sweep
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import parse_sweep
    from vfm_ablate.sweep.store import TrialStore

    # pretrained weights (a local checkpoint): the repeats (other seeds) share one backbone, and with it its features
    # (random-init repeats hold other backbones, which never share: tests/test_properties_feature_keys.py)
    torch.manual_seed(0)
    torch.save(build_backbone(get_entry("tiny_vit_p14"), pretrained=False).net.state_dict(), tmp_path / "tiny.pt")
    data_b = {**TINY_DATA, "domain": "b", "n_train": 3, "n_test": 3}
    sweep = parse_sweep(
        {
            "name": "shared_features",
            "base": tiny_base({"max_epochs": 1}, regime="frozen", backbone="tiny_ckpt", weights="pretrained"),
            "backbones": {"tiny_ckpt": {**TINY_FACTS, "checkpoint": str(tmp_path / "tiny.pt")}},
            "axes": {"data.train": [["sa"], ["sb"]]},
            "repeats": 3,
            "datasets": {"sa": TINY_DATA, "sb": data_b},
            "run": {"max_concurrent_trials": 2},
            "tracking": {"enabled": False},
        },
        tmp_path / "shared_features.yaml",
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_sweep(plan(sweep), storage_path=str(tmp_path / "results"), workdir=tmp_path)
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out

    assert [t.status for t in outcome.trials] == ["FINISHED"] * 6
    distinct = (4 + 2) + (3 + 3)  # every train and test image of both datasets
    per_trial = [int(t.metrics["backbone_extractions"]) for t in outcome.trials]
    assert sum(per_trial) == distinct, per_trial  # not 6 trials x their images
    served = sum(int(t.metrics["feature_store_hits"]) for t in outcome.trials)
    assert served == 3 * distinct - distinct  # every other image a trial needed came from the store
    store = TrialStore(outcome.store_root)
    workers = {a["pid"] for t in outcome.trials for a in store.attempts(t.trial_id)}
    assert len(workers) == 2  # two Ray worker processes shared the one store
    assert f"backbone extractions: {distinct} over 6 frozen trials" in printed
    assert len(list((Path(outcome.store_root) / "features").rglob("*.pt"))) == distinct
