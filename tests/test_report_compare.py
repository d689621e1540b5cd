"""Comparisons over matched repeats (report/compare.py, `report --compare / --transfer`) against an independent
computation: runs planned by a real sweep (so settings collapse exactly as in a study), paired by hand with pandas,
intervals from scipy.stats.bootstrap called directly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from vfm_ablate.cli import main
from vfm_ablate.config import TrialSpec, alignment_label
from vfm_ablate.errors import VfmAblateError
from vfm_ablate.report.compare import NOISE, compare_settings, transfer_table
from vfm_ablate.report.runs import load_runs
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import parse_sweep
from vfm_ablate.tracking.runs import SweepTracker, TrialTracker
from vfm_ablate.tracking.store import default_tracking_uri

EFFECT = {"none": 0.0, "mmd": 0.1, "standardise": 0.0}  # what each method adds to the target IoU
SWEEP = {
    "name": "align",
    "base": {"backbone": "tiny_vit_p14", "weights": "random", "data": {"train": ["vnc"], "sampling": "balanced"}},
    "axes": [
        {
            "regime": ["frozen", "lora"],
            "lora.rank": [8, 16],
            "alignment": [{}, {"loss": "mmd"}, {"features": "standardise"}],
            "data": [{"train": ["vnc"], "target": ["lucchi_pp"]}, {"train": ["lucchi_pp"], "target": ["vnc"]}],
        }
    ],
    "repeats": 5,
}


def _specs() -> list[TrialSpec]:
    return [t.spec for t in plan(parse_sweep(SWEEP, "align.yaml")).trials]


def _method(s: TrialSpec) -> str:
    return alignment_label(s.alignment)


def _metrics(s: TrialSpec, rng: np.random.Generator) -> dict[str, float]:
    source = s.data.train[0]
    target = "vnc" if source == "lucchi_pp" else "lucchi_pp"
    lora = 0.05 if s.regime == "lora" else 0.0
    return {
        f"iou_fg/{source}": 0.7 + lora + float(rng.normal(0, 0.02)),
        f"iou_fg/{target}": 0.3 + lora + EFFECT[_method(s)] + float(rng.normal(0, 0.02)),
        "diag/head_input/fd": 50.0 - (20.0 if _method(s) == "standardise" else 0.0) + float(rng.normal(0, 1)),
    }


@pytest.fixture(scope="module")
def runs() -> tuple[pd.DataFrame, list[tuple[TrialSpec, dict[str, float]]]]:
    rng = np.random.default_rng(7)
    trials = [(s, _metrics(s, rng)) for s in _specs()]
    rows = []
    for i, (s, m) in enumerate(trials):
        row = {"run_id": f"r{i}", "status": "FINISHED", "start_time": i, "trial_id": s.trial_id()}
        row.update({f"params.{k}": v for k, v in s.flat_params().items()})
        row.update({f"metrics.{k}": v for k, v in m.items()})
        rows.append(row)
    rows.append({**rows[0], "run_id": "failed", "status": "FAILED", "trial_id": "x" * 12})  # never compared
    return pd.DataFrame(rows), trials


def _independent(trials, side_a, side_b, key, metric) -> dict[tuple, list[float]]:
    """Δ per group by hand: pair the b trial with the a trial of the same key (which includes the seeds)."""
    a = {key(s): m[metric] for s, m in trials if side_a(s) and metric in m}
    out: dict[tuple, list[float]] = {}
    for s, m in trials:
        if side_b(s) and metric in m and key(s) in a:
            group = key(s)[:-2]  # without the seeds
            out.setdefault(group, []).append(m[metric] - a[key(s)])
    return out


def _ci(deltas: list[float]) -> tuple[float, float]:
    res = bootstrap((np.array(deltas),), np.mean, method="BCa", rng=np.random.default_rng(0), n_resamples=9999)
    return res.confidence_interval.low, res.confidence_interval.high


def test_method_against_none_equals_a_hand_paired_bootstrap(runs) -> None:
    frame, trials = runs
    out = compare_settings(frame, "method", "none", "mmd")

    def key(s: TrialSpec) -> tuple:
        rank = s.lora.rank if s.regime == "lora" else None
        return (s.regime, rank, s.data.train[0], s.seed, s.split_seed)

    for metric in ("iou_fg/lucchi_pp", "iou_fg/vnc"):
        expected = _independent(trials, lambda s: _method(s) == "none", lambda s: _method(s) == "mmd", key, metric)
        got = out[out["metric"] == metric]
        assert len(got) == len(expected) == 6  # (frozen, lora r8, lora r16) x 2 directions
        for (regime, rank, train), deltas in expected.items():
            row = got[(got["params.regime"] == regime) & (got["params.data.train"] == train)]
            if rank is not None:
                row = row[row["params.lora.rank"] == str(rank)]
            assert len(row) == 1
            r = row.iloc[0]
            assert r["n"] == len(deltas) == 5
            assert r["delta"] == pytest.approx(np.mean(deltas), abs=1e-12)
            low, high = _ci(deltas)
            assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), abs=1e-12)
            assert r["verdict"] == (NOISE if low <= 0 <= high else "beyond seed noise")
            # the target was dropped from the unaligned trials, sampling too: neither is compared, the method's
            # values label the group
            assert r["params.data.target"] in ("vnc", "lucchi_pp") and r["params.data.sampling"] == "balanced"
            if metric != f"iou_fg/{train}":  # the transfer direction: mmd's +0.1 is far beyond seed noise
                assert r["delta"] > 0.05 and r["verdict"] == "beyond seed noise"


def test_any_axis_lora_against_frozen_pairs_each_rank_with_the_frozen_run(runs) -> None:
    frame, trials = runs
    out = compare_settings(frame, "regime", "frozen", "lora", ["iou_fg/vnc"])

    def key(s: TrialSpec) -> tuple:
        return (_method(s), s.data.train[0], s.lora.rank if s.regime == "lora" else 0, s.seed, s.split_seed)

    frozen = {(k[0], k[1], k[3], k[4]): m["iou_fg/vnc"] for s, m in trials if s.regime == "frozen" for k in [key(s)]}
    expected: dict[tuple, list[float]] = {}
    for s, m in trials:
        if s.regime == "lora":
            k = key(s)
            expected.setdefault(k[:3], []).append(m["iou_fg/vnc"] - frozen[(k[0], k[1], k[3], k[4])])
    assert len(out) == len(expected) == 3 * 2 * 2  # methods x directions x ranks
    for _, r in out.iterrows():
        method = alignment_label(
            TrialSpec.model_validate(
                {"backbone": "x", "data": {"train": ["a", "b"]}, "alignment": _alignment_from(r)}
            ).alignment
        )
        deltas = expected[(method, r["params.data.train"], int(r["params.lora.rank"]))]
        assert r["delta"] == pytest.approx(np.mean(deltas), abs=1e-12) and r["n"] == 5
        assert r["delta"] == pytest.approx(0.05, abs=0.04)
    # rank 8 vs 16: frozen runs log the default rank 16 they never used; they are no value of the axis
    ranks = compare_settings(frame, "lora.rank", "8", "16", ["iou_fg/vnc"])
    assert len(ranks) == 3 * 2 and (ranks["n"] == 5).all() and "params.regime" not in ranks


def _alignment_from(row: pd.Series) -> dict:
    return {
        k.split(".", 2)[2]: v
        for k, v in row.items()
        if k.startswith("params.alignment.") and isinstance(v, str) and k.split(".", 2)[2] in ("features", "loss")
    }


def test_identical_settings_give_zero_width_intervals_and_single_pairs_none() -> None:
    base = {"run_id": "", "status": "FINISHED", "start_time": 0, "params.backbone": "b", "params.data.train": "vnc"}
    rows = []
    for seed in (0, 1, 2):
        for rank, value in (("8", 0.5), ("16", 0.6)):
            rows.append(
                {**base, "run_id": f"{rank}-{seed}", "trial_id": f"{rank}-{seed}", "params.seed": str(seed),
                 "params.split_seed": str(seed), "params.lora.rank": rank, "params.regime": "lora",
                 "metrics.iou_fg/vnc": value + seed * 0.01}
            )  # fmt: skip
    out = compare_settings(pd.DataFrame(rows), "lora.rank", "8", "16")
    r = out.iloc[0]
    assert r["delta"] == pytest.approx(0.1) and r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    assert r["verdict"] == "beyond seed noise"
    one = compare_settings(pd.DataFrame(rows[:2]), "lora.rank", "8", "16").iloc[0]
    assert one["n"] == 1 and math.isnan(one["ci_low"]) and one["verdict"] == "one pair: no interval"


def test_unknown_axes_and_values_are_named(runs) -> None:
    frame, _ = runs
    with pytest.raises(VfmAblateError, match="Did you mean 'regime'"):
        compare_settings(frame, "regim", "frozen", "lora")
    with pytest.raises(VfmAblateError, match="no finished run has regime = 'ful'"):
        compare_settings(frame, "regime", "frozen", "ful")


def test_transfer_table_holds_every_method_against_none_with_diagnostics(runs) -> None:
    frame, _ = runs
    table = transfer_table(frame)
    assert set(table["b"]) == {"mmd", "standardise"} and set(table["a"]) == {"none"}
    fd = table[(table["b"] == "standardise") & (table["metric"] == "diag/head_input/fd")]
    assert len(fd) == 6 and (fd["delta"] < -15).all() and (fd["verdict"] == "beyond seed noise").all()


# --------------------------------------------------------------------------------------------- the command


@pytest.mark.slow  # the command end to end on an MLflow store
def test_report_compare_and_transfer_print_and_write_the_tables(tmp_path: Path, runs, capsys) -> None:
    _, trials = runs
    uri = default_tracking_uri(tmp_path)
    sweep = SweepTracker(uri, "align", "align", "s1", "e1")
    parent = sweep.start({})
    for s, m in trials:
        tracker = TrialTracker(uri, "align", parent, "s1", s.trial_id(), "e1")
        tracker.open(s.flat_params())
        tracker.log_final(m)
        tracker.close("FINISHED")
    sweep.finish()
    out_dir = tmp_path / "report"
    code = main(
        [
            "report",
            "align",
            "--tracking-uri",
            uri,
            "--out",
            str(out_dir),
            "--compare",
            "regime=frozen,lora",
            "--transfer",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    expected = compare_settings(load_runs(uri, "align"), "regime", "frozen", "lora")
    first = expected.iloc[0]
    assert f"{first['delta']:+.3f} [{first['ci_low']:+.3f}, {first['ci_high']:+.3f}]" in printed
    assert "regime: lora vs frozen" in printed and "alignment methods against none" in printed
    written = (out_dir / "compare_regime_frozen_lora.md").read_text()
    assert written.count("\n| ") == 1 + len(expected)  # the header, then one row per (group, metric)
    # the report itself carries the alignment table too (and so does the sweep run's report artifact)
    in_report = pd.read_csv(out_dir / "alignment.csv")
    assert len(in_report) == len(transfer_table(load_runs(uri, "align")))
    assert "## Alignment methods against none" in (out_dir / "report.md").read_text()
    assert "<h2>Alignment methods against none</h2>" in (out_dir / "report.html").read_text()
    transfer = (out_dir / "transfer.md").read_text()
    assert "vnc (target lucchi_pp) → lucchi_pp" in transfer and "within seed noise" in transfer
    assert main(["report", "align", "--tracking-uri", uri, "--compare", "regime=frozen"]) != 0
    assert "--compare 'regime=frozen': expected AXIS=A,B" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the study tables


def test_alignment_methods_split_the_study_tables_as_one_setting_in_rows(runs) -> None:
    """The report's tables name each alignment method once (`alignment=mmd`), not every `alignment.*` field, and
    put it in the rows: a 9-method sweep keeps the study's narrow columns. Cells equal the runs' own means."""
    from vfm_ablate.report.study import block_tables
    from vfm_ablate.report.tables import summary_table

    frame, trials = runs
    table = summary_table(frame)
    assert table.variant_params == ["alignment", "lora.rank"]
    [vnc_block] = [b for b in block_tables(table) if b.train == "vnc"]
    tests = ("lucchi_pp", "vnc", "macro", "pooled")
    assert set(vnc_block.table.columns) == {f"{t} · {r}" for t in tests for r in ("frozen", "lora")}
    rows = set(vnc_block.table.index)
    assert "tiny_vit_p14 (alignment=mmd)" in rows  # frozen: lora.rank does not apply
    assert "tiny_vit_p14 (alignment=mmd, lora.rank=8)" in rows
    mine = [
        m["iou_fg/lucchi_pp"]
        for s, m in trials
        if s.data.train == ["vnc"] and s.regime == "frozen" and alignment_label(s.alignment) == "mmd"
    ]
    cell = vnc_block.table.loc["tiny_vit_p14 (alignment=mmd)", "lucchi_pp · frozen"]
    assert cell == f"{np.mean(mine):.3f} ± {np.std(mine, ddof=1):.3f} ({len(mine)})"
    assert not any("alignment.loss" in r or "→" in r for r in rows)  # one target per method: not repeated


def test_the_target_joins_the_method_label_only_where_one_method_has_several_targets() -> None:
    from vfm_ablate.report.tables import alignment_labels

    runs = pd.DataFrame(
        {
            "params.backbone": ["x"] * 4,
            "params.data.train": ["a", "a", "a", "b"],
            "params.data.target": ["", "t1", "t2", "t1"],
            "params.alignment.loss": ["none", "mmd", "mmd", "mmd"],
        }
    )
    assert alignment_labels(runs).tolist() == ["none", "mmd → t1", "mmd → t2", "mmd"]
