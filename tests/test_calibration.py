"""`vfm-ablate calibrate` on CPU writes a calibration file that `run --dry-run --calibration` uses; the estimate
model against hand-computed trials; epochs from the sweep's finished trials in MLflow; GPU shares from memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vfm_ablate.calibration.records import (
    Calibration,
    CalibrationSettings,
    ConfigKey,
    DeviceInfo,
    Measurement,
    Spread,
    load_calibration,
    save_calibration,
)
from vfm_ablate.cli.main import main
from vfm_ablate.errors import ConfigError
from vfm_ablate.sweep.cost.epochs import EpochModel, observed_epochs
from vfm_ablate.sweep.cost.estimate import estimate_sweep, measured_gpu_shares, measured_share, with_gpu_shares
from vfm_ablate.sweep.cost.packing import gpu_nodes
from vfm_ablate.sweep.cost.workload import config_keys, sweep_workloads
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import parse_sweep

DATA = {"layout": "synthetic", "domain": "a", "n_train": 10, "n_test": 4, "size": [32, 32]}


def _sweep(tmp_path: Path, **extra: object) -> dict:
    return {
        "name": "costed",
        "base": {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "device": "cpu",
            "data": {"train": ["sa"], "resize": {"policy": "native"}},
            "optim": {"max_epochs": 3},
        },
        "axes": {"regime": ["frozen", "lora"]},
        "datasets": {"sa": DATA},
        **extra,
    }


def _measurement(regime: str, step: float, evaluation: float, extract: float | None, peak: float | None) -> Measurement:
    key = ConfigKey(backbone="tiny_vit_p14", regime=regime, precision="fp32", height=28, width=28, batch_size=2)
    return Measurement(
        key=key.model_copy(update={"lora_rank": 16 if regime == "lora" else None}),
        setup_s=2.0,
        train_step_s=Spread.of([step, step]),
        eval_image_s=Spread.exactly(evaluation),
        extract_image_s=Spread.exactly(extract) if extract is not None else None,
        save_s=0.5,
        peak_memory_mb=peak,
        memory_kind="cuda_allocated" if peak is not None else "none",
    )


def _calibration(measurements: list[Measurement]) -> Calibration:
    return Calibration(
        created="2026-01-01T00:00:00+00:00",
        device=DeviceInfo(kind="cuda", name="H100", memory_gb=80.0, cpu_count=26),
        torch_version="2.x",
        vfm_ablate_version="0",
        settings=CalibrationSettings(warmup=1, repeats=2),
        startup_s=7.0,
        ray_start_s=3.0,
        measurements=measurements,
    )


@pytest.mark.slow(seconds=30)
def test_calibrate_on_cpu_writes_a_file_that_the_dry_run_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "costed.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep(tmp_path, run={"num_cpus": 2})))
    out = tmp_path / "cal.json"
    args = ["calibrate", str(sweep_file), "-o", str(out), "--warmup", "1", "--repeats", "2", "--no-ray"]
    assert main(args) == 0
    cal = load_calibration(out)
    assert cal.device.kind == "cpu" and cal.torch_version and cal.settings.repeats == 2
    assert cal.settings.sweep == str(sweep_file) and cal.settings.threads == 1
    assert cal.settings.concurrent == 2  # the sweep runs 2 one-CPU trials at once here: measured 2 at once
    by_regime = {m.key.regime: m for m in cal.measurements}
    assert set(by_regime) == {"frozen", "lora"}
    for m in by_regime.values():
        assert (m.key.height, m.key.width, m.key.batch_size) == (28, 28, 2)
        assert m.train_step_s.n == 2 * 2 and m.train_step_s.median > 0 and m.eval_image_s.median > 0
        # measured in a fresh process: its peak RSS (a high-water mark, so at least the peak reached while importing
        # the libraries before the model was built; a 28 px tiny model may not raise it further)
        assert m.memory_kind == "process_rss" and m.peak_memory_mb >= m.baseline_memory_mb > 100
    assert by_regime["frozen"].extract_image_s is not None and by_regime["lora"].extract_image_s is None
    assert by_regime["lora"].key.lora_rank == 16
    assert cal.startup_s > 0 and [d.dataset for d in cal.datasets] == ["sa"]
    capsys.readouterr()

    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"  # no store there: epochs from max_epochs, nothing created
    assert main(["run", str(sweep_file), "--dry-run", "--calibration", str(out), "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert f"estimate from {out}: cpu" in text
    assert "3 (max_epochs)" in text
    assert "total: 2 trials" in text
    assert "makespan on this machine's local Ray" in text
    assert not (tmp_path / "none").exists()


def test_the_estimate_is_the_hand_computed_sum(tmp_path: Path) -> None:
    sweep = parse_sweep({**_sweep(tmp_path), "repeats": 2}, tmp_path / "costed.yaml")
    the_plan = plan(sweep)
    trials = the_plan.trials
    workloads = sweep_workloads(the_plan)
    keys = config_keys(workloads)
    assert {(k.regime, k.height, k.width, k.batch_size) for k in keys} == {
        ("frozen", 28, 28, 2),
        ("lora", 28, 28, 2),
    }
    cal = _calibration([_measurement("frozen", 0.2, 0.01, 0.05, 1000.0), _measurement("lora", 1.0, 0.1, None, 20000.0)])
    est = estimate_sweep(the_plan, workloads, cal, EpochModel(), gpu_nodes(1))
    frozen_1, frozen_2, lora_1, lora_2 = sorted(est.trials, key=lambda t: (t.trial.spec.regime, t.trial.spec.seed))
    # 10 train images: 1 validation, 9 trained in 5 batches (4 of 2 images, 1 of 1: half a measured step)
    assert lora_1.workload.step_groups == {(28, 28, 2): 4, (28, 28, 1): 1}
    # lora: setup 2 + 3 epochs x (4.5 steps x 1.0 + 1 val x 0.1) + 4 test x 0.1 + save 0.5
    assert lora_1.seconds == pytest.approx(2 + 3 * 4.6 + 0.4 + 0.5)
    # frozen: the first repeat extracts all 14 images (0.05 each) into the sweep's store; the second loads them
    assert frozen_1.extraction_s == pytest.approx(14 * 0.05) and frozen_2.extraction_s == 0
    assert frozen_1.seconds == pytest.approx(2 + 3 * (4.5 * 0.2 + 0.01) + 4 * 0.01 + 0.5 + 0.7)
    assert frozen_2.seconds == pytest.approx(frozen_1.seconds - 0.7)
    # GPU share from peak memory (80 GB, 90 % usable): 20000 MB -> 3 per GPU; 1000 MB -> 73 per GPU
    assert (lora_1.gpu, lora_1.share_source) == (pytest.approx(1 / 3), "memory")
    assert frozen_1.gpu == pytest.approx(1 / 73)
    assert est.gpu_hours == pytest.approx(sum(t.seconds * t.gpu for t in est.trials) / 3600)
    # `run --calibration`: the trials ask Ray for these shares instead of the entry's guess (0.05)
    asks = {t.trial_id: t.resources.gpu for t in with_gpu_shares(trials, measured_gpu_shares(est))}
    assert asks[lora_1.trial.trial_id] == pytest.approx(1 / 3) and asks[frozen_2.trial.trial_id] == pytest.approx(
        1 / 73
    )
    assert {t.resources.gpu for t in trials} == {0.05}
    # one GPU holds all four at once: makespan = the longest trial, plus Ray start-up and worker imports
    assert est.wall_s == pytest.approx(3.0 + 7.0 + max(t.seconds for t in est.trials))


def test_sweep_gpu_settings_override_the_measured_share_and_missing_configurations_are_named(tmp_path: Path) -> None:
    sweep = parse_sweep(
        _sweep(tmp_path, resources={"overrides": [{"regime": "lora", "gpu": 1}]}), tmp_path / "costed.yaml"
    )
    the_plan = plan(sweep)
    workloads = sweep_workloads(the_plan)
    est = estimate_sweep(the_plan, workloads, _calibration([_measurement("lora", 1.0, 0.1, None, 500.0)]), EpochModel())
    frozen, lora = est.trials
    assert (lora.gpu, lora.share_source) == (1.0, "sweep")
    assert frozen.seconds is None and frozen.missing == ("tiny_vit_p14 frozen fp32 28x28 batch 2",)
    assert not est.complete and est.makespan_s is None


def test_a_trial_larger_than_the_gpu_needs_whole_gpus() -> None:
    cal = _calibration([])
    share, fits = measured_share(_measurement("full", 1.0, 0.1, None, 100_000.0), cal)
    assert (share, fits) == (2.0, 0)
    assert measured_share(_measurement("full", 1.0, 0.1, None, None), cal) == (None, None)


def test_epochs_come_from_the_sweeps_finished_trials_in_mlflow(tmp_path: Path) -> None:
    from vfm_ablate.tracking.store import tracking_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking_client(uri)
    experiment = client.create_experiment("costed")
    for epochs, status in ((10, "FINISHED"), (40, "FINISHED"), (20, "FINISHED"), (900, "FAILED")):
        run = client.create_run(experiment, tags={"vfm.role": "trial", "vfm.trial_id": f"t{epochs}"})
        for key, value in {"backbone": "tiny_vit_p14", "regime": "lora", "data.train": "sa"}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "epochs_run", epochs)
        client.set_terminated(run.info.run_id, status)
    sweep = parse_sweep({**_sweep(tmp_path), "base": {**_sweep(tmp_path)["base"], "optim": {}}}, tmp_path / "c.yaml")
    frozen, lora = [t.spec for t in plan(sweep).trials]
    model = observed_epochs(uri, "costed", assumed=100)
    assert model.epochs_for(lora) == (20, "median of 3 finished")
    assert model.epochs_for(frozen) == (100, "assumed")  # no finished frozen trial yet
    other = observed_epochs(uri, "other")
    assert other.observed == {} and "'other'" in other.note and other.epochs_for(lora) == (100, "assumed")
    missing = tmp_path / "nothing" / "mlflow.db"
    assert "no MLflow store" in observed_epochs(f"sqlite:///{missing}", "costed").note
    assert not missing.parent.exists()  # a dry run creates no store


def test_a_broken_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such calibration file"):
        load_calibration(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    save_calibration(_calibration([]), bad)
    bad.write_text(bad.read_text().replace('"startup_s"', '"start_up_s"'))
    with pytest.raises(ConfigError, match="start_up_s"):
        load_calibration(bad)


def test_search_mode_counts_every_sample_and_runs_grid_points_one_after_another(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            **_sweep(tmp_path),
            "axes": {"regime": ["lora"], "lora.rank": [16, 8]},
            "search": {"num_samples": 3, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}},
        },
        tmp_path / "costed.yaml",
    )
    the_plan = plan(sweep)
    workloads = sweep_workloads(the_plan)
    est = estimate_sweep(
        the_plan, workloads, _calibration([_measurement("lora", 1.0, 0.1, None, 20000.0)]), EpochModel(), gpu_nodes(1)
    )
    assert [t.samples for t in est.trials] == [3, 3]
    one = est.trials[0].seconds
    assert est.trial_hours == pytest.approx(6 * one / 3600)
    # each grid point's 3 samples fit on the GPU at a third each: one trial's time per point, points in sequence
    assert est.makespan_s == pytest.approx(2 * one)


def test_frozen_features_are_charged_once_per_dataset_of_the_sweep(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            **_sweep(tmp_path),
            "axes": {"data.train": [["sa"], ["sa", "sb"]]},
            "base": {**_sweep(tmp_path)["base"], "regime": "frozen"},
            "datasets": {"sa": DATA, "sb": {**DATA, "domain": "b", "n_train": 6, "n_test": 2}},
        },
        tmp_path / "costed.yaml",
    )
    the_plan = plan(sweep)
    workloads = sweep_workloads(the_plan)
    est = estimate_sweep(
        the_plan, workloads, _calibration([_measurement("frozen", 0.2, 0.01, 0.05, None)]), EpochModel()
    )
    only_a, paired = est.trials
    assert only_a.extraction_s == pytest.approx(14 * 0.05)
    assert paired.extraction_s == pytest.approx(8 * 0.05)  # sa is in the store already; only sb is new


@pytest.mark.slow(seconds=30)
def test_a_launchs_start_up_is_timed_in_fresh_processes(tmp_path: Path) -> None:
    from vfm_ablate.calibration.launch import launch_costs

    sweep_file = tmp_path / "costed.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep(tmp_path)))
    timed, notes = launch_costs(sweep_file, tracked=True)
    assert notes == []
    assert set(timed) == {"driver_start_s", "ray_start_s", "tracking_start_s"}
    assert all(0 < seconds < 120 for seconds in timed.values())
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nbase: {backbone: no_such_backbone}\n")
    timed, notes = launch_costs(broken, tracked=False, attempts=1)
    assert "driver_start_s" not in timed and notes and "driver_start_s: not measured" in notes[0]
    assert not list(tmp_path.glob("*.db"))  # the dry run and the timed store leave nothing behind


def test_target_images_of_a_loss_level_alignment_are_trained_on_and_extracted(tmp_path: Path) -> None:
    base = {**_sweep(tmp_path)["base"], "regime": "frozen", "data": {"train": ["sa"], "target": ["sb"]}}
    base["data"]["resize"] = {"policy": "native"}
    base["data"]["sampling"] = "balanced"
    sweep = parse_sweep(
        {
            **_sweep(tmp_path),
            "base": base,
            "axes": {"alignment": [{}, {"loss": "mmd"}]},
            "datasets": {"sa": DATA, "sb": {**DATA, "domain": "b", "n_train": 6, "n_test": 2}},
        },
        tmp_path / "costed.yaml",
    )
    by_method = {w.trial.spec.alignment.loss: w for w in sweep_workloads(plan(sweep))}
    none, mmd = by_method["none"], by_method["mmd"]
    # none: the target's training images are dropped (nothing reads them): 9 source images in 5 batches; only
    # sb's 2 test images are extracted
    assert none.step_groups == {(28, 28, 2): 4, (28, 28, 1): 1}
    assert none.target_images == {} and none.extracted_images["sb"] == 2
    # mmd: balanced "1+1" batches over 9 source and 6 target images; sb's 6 training images extracted too
    assert sum(n * k for (_, _, n), k in mmd.step_groups.items()) == 2 * 9
    assert mmd.target_images == {"sb": 6} and mmd.extracted_images["sb"] == 6 + 2


def test_a_configuration_is_measured_with_the_trials_own_lora_settings() -> None:
    """Calibration builds the network from the trial's LoRA section (rank, alpha, dropout, targets): peft's scaling
    in the measured model is the trial's alpha / rank, and MLP targets count as another configuration."""
    from vfm_ablate.calibration.records import ConfigKey
    from vfm_ablate.config import TrialSpec
    from vfm_ablate.models.registry import get_entry
    from vfm_ablate.models.segmenter import build_segmenter

    lora = {"rank": 4, "alpha": 12.0, "dropout": 0.1, "targets": "attention+mlp"}
    spec = TrialSpec.model_validate(
        {"backbone": "tiny_vit_p14", "regime": "lora", "lora": lora, "data": {"train": ["x"]}}
    )
    key = ConfigKey.of(spec, 28, 28, 2)
    measured = key.trial_spec("cpu")
    assert measured.lora == spec.lora and measured.weights == "random" and measured.optim.batch_size == 2
    model = build_segmenter(measured, get_entry("tiny_vit_p14"), device="meta")
    scalings = [m.scaling["default"] for m in model.modules() if hasattr(m, "scaling") and "default" in m.scaling]
    assert scalings and all(s == 12.0 / 4 for s in scalings)
    assert any(t.endswith("mlp.fc1") for t in model.lora_targets)
    attention_only = ConfigKey.of(
        spec.model_copy(update={"lora": spec.lora.model_copy(update={"targets": "attention"})}), 28, 28, 2
    )
    assert attention_only.label() != key.label()
