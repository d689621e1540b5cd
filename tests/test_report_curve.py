"""The label-efficiency curve (report/curve.py, `report --curve data.labelled`) against an independent computation:
runs planned by a real sweep (a zero-shot trial's sampling collapses as in a study), grouped and paired by hand,
intervals from scipy.stats.bootstrap called directly; the figure in the report and on the sweep run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from vfm_ablate.cli import main
from vfm_ablate.config import TrialSpec
from vfm_ablate.errors import VfmAblateError
from vfm_ablate.report.compare import compare_settings
from vfm_ablate.report.curve import ALL, labelled_curves
from vfm_ablate.report.runs import load_runs
from vfm_ablate.report.tables import summary_table
from vfm_ablate.sweep.outcome import SweepOutcome, publish_summary
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import parse_sweep
from vfm_ablate.sweep.store import TrialStore
from vfm_ablate.tracking.runs import SweepTracker, TrialTracker
from vfm_ablate.tracking.store import default_tracking_uri, tracking_client
from vfm_ablate.tracking.tags import SPEC_TAG

N_TRAIN = 17  # Lucchi++ subset training images: what 'all' logs
SWEEP = {
    "name": "le",
    "base": {
        "backbone": "tiny_vit_p14", "weights": "random",
        "data": {"train": ["vnc", "lucchi_pp"], "sampling": "balanced"},
    },
    "axes": {
        "regime": ["frozen", "lora"],
        "alignment": [{}, {"input": "zscore"}],
        "data.labelled.lucchi_pp": [0, 1, 4, "all"],
    },
    "repeats": 4,
}  # fmt: skip


def _k(s: TrialSpec) -> str:
    return str(s.data.labelled.get("lucchi_pp", ALL))


def _metrics(s: TrialSpec, rng: np.random.Generator) -> dict[str, float]:
    k = s.data.labelled.get("lucchi_pp", N_TRAIN)
    gain = 0.3 * math.log2(1 + k) / math.log2(1 + N_TRAIN)
    shift = 0.05 * (s.regime == "lora") + 0.02 * (s.alignment.input == "zscore")
    return {
        "iou_fg/lucchi_pp": 0.2 + gain + shift + float(rng.normal(0, 0.02)),
        "iou_fg/vnc": 0.7 + float(rng.normal(0, 0.02)),
        "labelled_images/lucchi_pp": float(k),
        "labelled_images/vnc": 17.0,
    }


@pytest.fixture(scope="module")
def runs() -> tuple[pd.DataFrame, list[tuple[TrialSpec, dict[str, float]]]]:
    rng = np.random.default_rng(3)
    trials = [(t.spec, _metrics(t.spec, rng)) for t in plan(parse_sweep(SWEEP, "le.yaml")).trials]
    rows = []
    for i, (s, m) in enumerate(trials):
        row = {"run_id": f"r{i}", "status": "FINISHED", "start_time": i, "trial_id": s.trial_id()}
        row.update({f"params.{k}": v for k, v in s.flat_params().items()})
        row.update({f"metrics.{k}": v for k, v in m.items()})
        rows.append(row)
    return pd.DataFrame(rows), trials


def test_zero_shot_trials_collapse_their_sampling_yet_join_their_line(runs) -> None:
    _, trials = runs
    assert {s.data.sampling for s, _ in trials if _k(s) == "0"} == {"natural"}  # one dataset in the batches
    (curve,) = labelled_curves(runs[0], n_resamples=999)
    assert curve.dataset == "lucchi_pp" and curve.metrics == ["iou_fg/lucchi_pp", "iou_fg/vnc"]
    own = curve.points[curve.points["metric"] == "iou_fg/lucchi_pp"]
    assert sorted(set(own["line"])) == ["frozen · none", "frozen · zscore", "lora · none", "lora · zscore"]
    assert own.groupby("line")["labelled"].apply(list).tolist() == [["0", "1", "4", ALL]] * 4
    assert set(own["n"]) == {4} and list(own[own["labelled"] == ALL]["x"].unique()) == [N_TRAIN]


def test_tables_and_comparisons_name_zero_shot_and_all(runs) -> None:
    """The block tables put a zero-shot run under `vnc+lucchi_pp[0]` (its sampling did not apply), the others'
    rows say `data.labelled.lucchi_pp=all` for the default; `--compare` takes `all` as a value."""
    table = summary_table(runs[0])
    assert set(table.stats["train"]) == {"vnc+lucchi_pp[0]", "vnc+lucchi_pp (balanced)"}
    assert any("data.labelled.lucchi_pp=all" in v for v in table.stats["variant"])
    compared = compare_settings(runs[0], "data.labelled.lucchi_pp", "4", "all", ["iou_fg/lucchi_pp"], n_resamples=99)
    assert len(compared) == 4 and set(compared["n"]) == {4} and (compared["delta"] > 0).all()  # all − 4


def _ci(values: np.ndarray) -> tuple[float, float]:
    res = bootstrap((values,), np.mean, n_resamples=999, method="BCa", rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def test_points_equal_a_hand_computation_over_matched_repeats(runs) -> None:
    _, trials = runs
    (curve,) = labelled_curves(runs[0], n_resamples=999)
    metric = "iou_fg/lucchi_pp"
    by: dict[tuple[str, str, str], dict[int, float]] = {}
    for s, m in trials:
        by.setdefault((s.regime, s.alignment.label(), _k(s)), {})[s.seed] = m[metric]
    for (regime, method, k), values in by.items():
        row = curve.points[
            (curve.points["line"] == f"{regime} · {method}")
            & (curve.points["labelled"] == k)
            & (curve.points["metric"] == metric)
        ].iloc[0]
        v = np.array([values[seed] for seed in sorted(values)])
        assert row["mean"] == pytest.approx(v.mean()) and row["std"] == pytest.approx(v.std(ddof=1))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(_ci(v))
        if k == ALL:
            assert math.isnan(row["delta"])
            continue
        reference = by[(regime, method, ALL)]
        a = np.array([reference[seed] for seed in sorted(values)])
        assert row["delta"] == pytest.approx((v - a).mean())
        assert (row["delta_low"], row["delta_high"]) == pytest.approx(_ci(v - a))
        assert row["share"] == pytest.approx(v.mean() / a.mean())
        assert row["share_low"] < row["share"] < row["share_high"]


def test_nothing_to_draw_is_an_error_saying_why(runs) -> None:
    plain = runs[0][runs[0]["params.data.labelled.lucchi_pp"].isna()].drop(columns="params.data.labelled.lucchi_pp")
    with pytest.raises(VfmAblateError, match="no finished run sets data.labelled"):
        labelled_curves(plain)
    assert labelled_curves(plain, required=False) == []


@pytest.mark.slow  # a sweep run end to end, then the report command
def test_report_curve_prints_writes_the_figure_and_the_sweep_run_logs_it(
    tmp_path: Path, runs, capsys: pytest.CaptureFixture[str]
) -> None:
    _, trials = runs
    uri = default_tracking_uri(tmp_path)
    sweep = SweepTracker(uri, "le", "le", "s1", "e1")
    parent = sweep.start({})
    for s, m in trials:
        tracker = TrialTracker(uri, "le", parent, "s1", s.trial_id(), "e1")
        tracker.open(s.flat_params(), tags={SPEC_TAG: s.model_dump_json()})
        tracker.log_final(m)
        tracker.close("FINISHED")
    out_dir = tmp_path / "report"
    assert main(["report", "le", "--tracking-uri", uri, "--out", str(out_dir), "--curve", "data.labelled"]) == 0
    printed = capsys.readouterr().out
    (curve,) = labelled_curves(load_runs(uri, "le"), n_resamples=2000)
    first = curve.points[(curve.points["labelled"] == "1") & (curve.points["metric"] == "iou_fg/lucchi_pp")].iloc[0]
    assert f"{first['delta']:+.3f} [{first['delta_low']:+.3f}, {first['delta_high']:+.3f}]" in printed
    assert "iou_fg/lucchi_pp against labelled lucchi_pp images" in printed
    png = out_dir / "curve_lucchi_pp.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "curve_lucchi_pp.png" in (out_dir / "report.md").read_text()
    assert "Label-efficiency curve: lucchi_pp" in (out_dir / "report.html").read_text()
    assert main(["report", "le", "--tracking-uri", uri, "--out", str(out_dir), "--curve", "data.labeled"]) == 2
    assert "Did you mean 'data.labelled'?" in capsys.readouterr().err

    store = TrialStore(str(tmp_path / "store"))
    publish_summary(sweep, SweepOutcome("le", store.root, [], []), store)
    sweep.finish()
    logged = [a.path for a in tracking_client(uri).list_artifacts(sweep.run_id, "report")]
    assert "report/curve_lucchi_pp.png" in logged and "report/curve_lucchi_pp.csv" in logged
