"""Reports from a tracking store holding a known set of runs (written with the real trackers on a SQLite store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vfm_ablate.cli import main
from vfm_ablate.cli.report import resolve_target
from vfm_ablate.config import DataSpec, LoraSpec, TrialSpec
from vfm_ablate.errors import VfmAblateError
from vfm_ablate.report.runs import load_runs
from vfm_ablate.report.tables import summary_table, to_markdown
from vfm_ablate.tracking.runs import SweepTracker, TrialTracker
from vfm_ablate.tracking.store import default_tracking_uri

EXPERIMENT = "paper-grid"
BACKBONES = {  # registry name -> (family, scale, backbone parameter count)
    "dinov2_vits14_reg": ("dinov2", "S", 22_000_000),
    "dinov2_vitb14_reg": ("dinov2", "B", 86_000_000),
    "openclip_vitl14": ("openclip", "L", 304_000_000),
}
TRAINS = {"lucchi_pp": ["lucchi_pp"], "lucchi_pp+vnc (balanced)": ["lucchi_pp", "vnc"]}
SEEDS = [0, 1, 2]
FAIL = {  # (backbone, train label, regime) -> seeds whose trial fails
    ("dinov2_vitb14_reg", "lucchi_pp", "lora"): {1},
    ("dinov2_vits14_reg", "lucchi_pp+vnc (balanced)", "frozen"): {0, 1, 2},
}


def _settings() -> list[tuple[str, str, str]]:
    out = [("dinov2_vits14_reg", t, r) for t in TRAINS for r in ("frozen", "lora")]
    out += [("dinov2_vitb14_reg", "lucchi_pp", r) for r in ("frozen", "lora")]
    return out + [("openclip_vitl14", "lucchi_pp", "frozen")]  # the other cells of B and L were never run


def _trial(backbone: str, train: str, regime: str, seed: int, rank: int = 16) -> tuple[str, dict[str, str]]:
    spec = TrialSpec(
        backbone=backbone,
        regime=regime,
        lora=LoraSpec(rank=rank),
        data=DataSpec(train=TRAINS[train], sampling="balanced" if len(TRAINS[train]) > 1 else "natural"),
        seed=seed,
        split_seed=seed,
    )
    family, scale, size = BACKBONES[backbone]
    params = {**spec.flat_params(), "backbone.family": family, "backbone.scale": scale, "backbone.params": str(size)}
    return spec.trial_id(), params


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[tuple[str, str, str, str], list[float]]]:
    """Write the known runs; return the URI and, per (backbone, train, regime, metric), the FINISHED values."""
    uri = default_tracking_uri(tmp_path_factory.mktemp("store"))
    rng = np.random.default_rng(1234)
    expected: dict[tuple[str, str, str, str], list[float]] = {}

    # an earlier sweep already ran one trial with identical settings: it must not count as an extra repeat
    old = SweepTracker(uri, EXPERIMENT, "pilot", "sweep0", "exec0")
    old_parent = old.start({})
    dup_id, dup_params = _trial("dinov2_vits14_reg", "lucchi_pp", "frozen", 0)
    dup = TrialTracker(uri, EXPERIMENT, old_parent, "sweep0", dup_id, "exec0")
    dup.open(dup_params)
    dup.log_final({"iou_fg/lucchi_pp": 0.999})
    dup.close("FINISHED")
    old.finish()

    sweep = SweepTracker(uri, EXPERIMENT, "grid", "sweep1", "exec1")
    parent = sweep.start({"sweep.trials": "21"})
    for backbone, train, regime in _settings():
        for seed in SEEDS:
            trial_id, params = _trial(backbone, train, regime, seed)
            tracker = TrialTracker(uri, EXPERIMENT, parent, "sweep1", trial_id, "exec1")
            tracker.open(params)
            if seed in FAIL.get((backbone, train, regime), set()):
                tracker.close("FAILED", error="RuntimeError: boom")
                continue
            datasets = TRAINS[train]
            final = {f"iou_fg/{d}": float(rng.uniform(0.4, 0.9)) for d in datasets}
            if len(datasets) > 1:
                final["macro_iou_fg"] = float(np.mean(list(final.values())))
                final["pooled_iou_fg"] = float(rng.uniform(0.0, 0.1))
            final.update({"params/total": BACKBONES[backbone][2] + 4e6, "params/head": 4e6, "params/lora": 0.0})
            tracker.log_final(final)
            tracker.close("FINISHED")
            for key, value in final.items():
                if key.startswith(("iou_fg/", "macro_", "pooled_")):
                    expected.setdefault((backbone, train, regime, key), []).append(value)
    sweep.finish()
    return uri, expected


def _label(metric_key: str) -> str:
    return metric_key.split("/", 1)[1] if "/" in metric_key else metric_key.split("_", 1)[0]


def test_table_cells_equal_independent_mean_and_std(store) -> None:
    uri, expected = store
    runs = load_runs(uri, EXPERIMENT)
    assert len(runs) == 7 * 3 + 1  # every trial run, the pilot's duplicate included; no parent runs
    assert set(runs["status"]) == {"FINISHED", "FAILED"}

    table = summary_table(runs)
    assert table.duplicates_dropped == 1
    assert table.variant_params == []
    cells, stats = table.cells, table.stats
    for (backbone, train, regime, key), values in expected.items():
        family, scale, _ = BACKBONES[backbone]
        column = (train, _label(key), regime, "")
        text = cells.loc[(family, scale, backbone), column]
        mean, std, n = np.mean(values), np.std(values, ddof=1), len(values)
        assert text.startswith(f"{mean:.3f} ± {std:.3f} ({n})"), (column, text)
        where = (stats["backbone"], stats["train"], stats["regime"], stats["test"])
        rec = stats[np.logical_and.reduce([col == v for col, v in zip(where, (backbone, train, regime, _label(key)))])]
        assert len(rec) == 1
        assert rec["mean"].iloc[0] == pytest.approx(mean, abs=1e-12)
        assert rec["std"].iloc[0] == pytest.approx(std, abs=1e-12)
        assert rec["n"].iloc[0] == n

    # failures are shown in the cell they belong to, next to the numbers of the finished repeats
    assert cells.loc[("dinov2", "B", "dinov2_vitb14_reg"), ("lucchi_pp", "lucchi_pp", "lora", "")].endswith(
        "(2); failed (1)"
    )
    all_failed = ("dinov2", "S", "dinov2_vits14_reg")
    for test in ("lucchi_pp", "vnc", "macro", "pooled"):
        assert cells.loc[all_failed, ("lucchi_pp+vnc (balanced)", test, "frozen", "")] == "failed (3)"
    # never-run settings are "—", not zero and not dropped
    openclip = ("openclip", "L", "openclip_vitl14")
    assert cells.loc[openclip, ("lucchi_pp", "lucchi_pp", "lora", "")] == "—"
    assert cells.loc[openclip, ("lucchi_pp+vnc (balanced)", "pooled", "frozen", "")] == "—"
    assert cells.loc[("dinov2", "B", "dinov2_vitb14_reg"), ("lucchi_pp+vnc (balanced)", "vnc", "lora", "")] == "—"
    # layout: scales ordered S < B within a family; single-dataset training before the pair; frozen before lora
    assert list(cells.index) == [("dinov2", "S", "dinov2_vits14_reg"), ("dinov2", "B", "dinov2_vitb14_reg"), openclip]
    assert [c[0] for c in cells.columns][:2] == ["lucchi_pp", "lucchi_pp"]
    assert [c[2] for c in cells.columns][:2] == ["frozen", "lora"]
    assert [c[1] for c in cells.columns][-2:] == ["pooled", "pooled"]


def test_report_command_writes_tables_and_figures(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = store
    out = tmp_path / "report"
    assert main(["report", EXPERIMENT, "--tracking-uri", uri, "--out", str(out), "--sweep-id", "sweep1"]) == 0
    printed = capsys.readouterr().out
    assert "21 trial runs" in printed and "failed (3)" in printed  # --sweep-id leaves the pilot sweep's run out
    # one narrow table per block of training data, rows named by family + scale
    assert "trained on lucchi_pp\n" in printed and "trained on lucchi_pp+vnc (balanced)\n" in printed
    block = printed.split("trained on lucchi_pp\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block[0].split() == ["backbone", "lucchi_pp", "·", "frozen", "lucchi_pp", "·", "lora"]
    assert [line.split("  ")[0] for line in block[2:]] == ["dinov2 S", "dinov2 B", "openclip L"]

    table = summary_table(load_runs(uri, EXPERIMENT, sweep_id="sweep1"))
    csv = pd.read_csv(out / "summary.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns[:3]) == ["family", "scale", "backbone"]
    assert csv.shape == (3, 3 + table.cells.shape[1])
    assert "failed (3)" in csv.iloc[0].tolist()
    stats = pd.read_csv(out / "summary_stats.csv")
    assert stats["n"].sum() == table.stats["n"].sum()
    assert len(pd.read_csv(out / "runs.csv")) == 21
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    assert "## Trained on lucchi_pp+vnc (balanced)" in markdown and "![IoU per backbone and regime]" in markdown
    assert html.count("data:image/png;base64,") == 3 and "<h2>Trained on lucchi_pp</h2>" in html  # self-contained
    assert "Alignment methods" not in markdown and not (out / "alignment.csv").exists()  # no alignment axis here
    for png in ("scale_plot.png", "regime_bars.png", "paired_vs_single.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    paired = pd.read_csv(out / "paired_vs_single.csv")
    assert paired["Δ vnc"].isna().all() and paired["Δ lucchi_pp"].notna().any()  # no vnc-only training


def test_report_reads_the_store_named_by_mlflow_tracking_uri(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like `vfm-ablate run`: no --tracking-uri and no tracking.uri in the sweep file -> $MLFLOW_TRACKING_URI."""
    uri, _ = store
    monkeypatch.chdir(tmp_path)  # ./mlflow.db would be empty here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(
        "name: grid\nbase:\n  backbone: dinov2_vits14_reg\n  data: {train: [lucchi_pp]}\n"
        f"tracking:\n  experiment: {EXPERIMENT}\n"
    )
    assert main(["report", str(sweep_file), "--out", str(tmp_path / "r"), "--sweep-id", "sweep1"]) == 0
    printed = capsys.readouterr().out
    assert f"at {uri}: 21 trial runs" in printed
    assert not (tmp_path / "mlflow.db").exists()


STUDY = "study"
STUDY_TRAINS = {"lucchi_pp": ["lucchi_pp"], "vnc": ["vnc"], "lucchi_pp+vnc (natural)": ["lucchi_pp", "vnc"]}


@pytest.fixture(scope="module")
def study(store) -> tuple[str, dict[tuple[str, str, str, str], list[float]]]:
    """Every trial tested on both datasets (cross-dataset tests), 3 seeds, one failure; returns the FINISHED values
    per (backbone, train label, regime, metric key), recorded here as they are logged."""
    uri, _ = store
    rng = np.random.default_rng(99)
    values: dict[tuple[str, str, str, str], list[float]] = {}
    for backbone in ("dinov2_vits14_reg", "dinov2_vitb14_reg"):
        for train, datasets in STUDY_TRAINS.items():
            for regime in ("frozen", "lora"):
                for seed in SEEDS:
                    spec = TrialSpec(
                        backbone=backbone,
                        regime=regime,
                        data=DataSpec(train=datasets, test=["lucchi_pp", "vnc"]),
                        seed=seed,
                        split_seed=seed,
                    )
                    family, scale, _ = BACKBONES[backbone]
                    params = {**spec.flat_params(), "backbone.family": family, "backbone.scale": scale}
                    tracker = TrialTracker(uri, STUDY, None, "sweepS", spec.trial_id(), "execS")
                    tracker.open(params)
                    if (backbone, train, regime, seed) == ("dinov2_vitb14_reg", "vnc", "lora", 2):
                        tracker.close("FAILED", error="boom")
                        continue
                    final = {f"iou_fg/{d}": float(rng.uniform(0.2, 0.9)) for d in ("lucchi_pp", "vnc")}
                    final["macro_iou_fg"] = float(np.mean(list(final.values())))
                    final["pooled_iou_fg"] = float(rng.uniform(0.2, 0.9))
                    tracker.log_final(final)
                    tracker.close("FINISHED")
                    for key, value in final.items():
                        values.setdefault((backbone, train, regime, key), []).append(value)
    return uri, values


def test_paired_vs_single_and_transfer_equal_an_independent_computation(study, tmp_path: Path) -> None:
    from vfm_ablate.report.study import paired_vs_single, transfer_matrices
    from vfm_ablate.report.write import write_report

    uri, values = study
    runs = load_runs(uri, STUDY)
    table = summary_table(runs)
    paired = paired_vs_single(table)
    labels = {"dinov2_vits14_reg": "dinov2 S", "dinov2_vitb14_reg": "dinov2 B"}
    assert list(zip(paired["backbone"], paired["regime"])) == [
        ("dinov2 S", "frozen"), ("dinov2 S", "lora"), ("dinov2 B", "frozen"), ("dinov2 B", "lora"),
    ]  # fmt: skip
    for backbone, label in labels.items():
        for regime in ("frozen", "lora"):
            [row] = paired[(paired["backbone"] == label) & (paired["regime"] == regime)].to_dict("records")
            assert row["paired"] == "lucchi_pp+vnc (natural)"
            singles = []
            for d in ("lucchi_pp", "vnc"):
                both = values[(backbone, "lucchi_pp+vnc (natural)", regime, f"iou_fg/{d}")]
                alone = values[(backbone, d, regime, f"iou_fg/{d}")]
                singles.append(np.mean(alone))
                assert row[f"Δ {d}"] == pytest.approx(np.mean(both) - np.mean(alone), abs=1e-12)
                assert row[f"n {d}"] == f"{len(both)}/{len(alone)}"
            macro = values[(backbone, "lucchi_pp+vnc (natural)", regime, "macro_iou_fg")]
            pooled = values[(backbone, "lucchi_pp+vnc (natural)", regime, "pooled_iou_fg")]
            assert row["Δ macro"] == pytest.approx(np.mean(macro) - np.mean(singles), abs=1e-12)
            assert row["paired macro"] == pytest.approx(np.mean(macro), abs=1e-12)
            assert row["paired pooled"] == pytest.approx(np.mean(pooled), abs=1e-12)
    assert paired.loc[3, "n vnc"] == "3/2"  # the failed seed is not averaged

    transfer = transfer_matrices(table)
    assert set(transfer) == {f"{label} · {regime}" for label in labels.values() for regime in ("frozen", "lora")}
    for backbone, label in labels.items():
        for regime in ("frozen", "lora"):
            frame = transfer[f"{label} · {regime}"]
            assert list(frame.columns) == ["lucchi_pp", "vnc"]
            assert list(frame.index) == list(STUDY_TRAINS)
            for train in STUDY_TRAINS:
                for d in ("lucchi_pp", "vnc"):
                    got = values[(backbone, train, regime, f"iou_fg/{d}")]
                    std = f" ± {np.std(got, ddof=1):.3f}" if len(got) > 1 else ""
                    failed = "; failed (1)" if (backbone, train, regime) == ("dinov2_vitb14_reg", "vnc", "lora") else ""
                    assert frame.at[train, d] == f"{np.mean(got):.3f}{std} ({len(got)}){failed}"

    parts, paths = write_report(runs, tmp_path / "study")
    assert {"paired_csv", "transfer_csv", "paired_plot"} <= set(paths)
    assert "## Transfer (train data → test data)" in paths["markdown"].read_text()
    with Image.open(paths["paired_plot"]) as img:
        assert img.width > 300


def test_report_target_may_be_a_sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(
        "name: grid\nbase:\n  backbone: dinov2_vits14_reg\n  data: {train: [lucchi_pp]}\n"
        "tracking:\n  experiment: my-exp\n  uri: http://127.0.0.1:5000\n"
    )
    assert resolve_target(str(sweep_file), None) == ("my-exp", "http://127.0.0.1:5000")
    assert resolve_target(str(sweep_file), "sqlite:////x/y.db") == ("my-exp", "sqlite:////x/y.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.yaml").write_text("name: plain\nbase:\n  backbone: dinov2_vits14_reg\n  data: {train: [vnc]}\n")
    # same defaults as `vfm-ablate run`: experiment = the file's stem, store = ./mlflow.db
    assert resolve_target("plain.yaml", None) == ("plain", f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    assert resolve_target("some-experiment", None) == (
        "some-experiment",
        f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}",
    )


def test_other_varying_settings_split_columns_instead_of_averaging(store) -> None:
    uri, _ = store  # same database, another experiment
    values = {16: [0.70, 0.72], 8: [0.50, 0.56]}
    for rank, results in values.items():
        for seed, value in enumerate(results):
            trial_id, params = _trial("dinov2_vits14_reg", "lucchi_pp", "lora", seed, rank=rank)
            tracker = TrialTracker(uri, "ranks", None, "sweepR", trial_id, "execR")
            tracker.open(params)
            tracker.log_final({"iou_fg/lucchi_pp": value})
            tracker.close("FINISHED")
    trial_id, params = _trial("dinov2_vits14_reg", "lucchi_pp", "frozen", 0, rank=16)
    frozen = TrialTracker(uri, "ranks", None, "sweepR", trial_id, "execR")
    frozen.open(params)
    frozen.log_final({"iou_fg/lucchi_pp": 0.6})
    frozen.close("FINISHED")
    table = summary_table(load_runs(uri, "ranks"))
    assert table.variant_params == ["lora.rank"]
    row = ("dinov2", "S", "dinov2_vits14_reg")
    assert table.cells.loc[row, ("lucchi_pp", "lucchi_pp", "frozen", "")] == "0.600 (1)"  # rank means nothing here
    for rank, results in values.items():
        cell = table.cells.loc[row, ("lucchi_pp", "lucchi_pp", "lora", f"lora.rank={rank}")]
        assert cell == f"{np.mean(results):.3f} ± {np.std(results, ddof=1):.3f} (2)"
    assert "lucchi_pp → lucchi_pp · lora · lora.rank=8" in to_markdown(table)


def test_clear_errors_for_wrong_store_or_experiment(store, tmp_path: Path) -> None:
    uri, _ = store
    with pytest.raises(VfmAblateError, match="Did you mean 'paper-grid'"):
        load_runs(uri, "paper_grid")
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    with pytest.raises(VfmAblateError, match="no MLflow database"):
        load_runs(missing, EXPERIMENT)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(VfmAblateError, match="no trial runs"):
        summary_table(load_runs(uri, EXPERIMENT, sweep_id="nope"))
    assert main(["report", "paper_grid", "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2
