"""Run names, labels and columns from what varies across a sweep's trials: every varying setting is named, nothing
that all trials share; a search's samples are named by their sampled values; the UI view gets the varying
settings as columns. No Ray: the planner and the Ray config's decoder are what make them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.sweep.describe import describe_plan
from vfm_ablate.sweep.plan import SweepPlan, plan
from vfm_ablate.sweep.spec import parse_sweep
from vfm_ablate.sweep.trainable import SEARCH_KEY, decode_config, encode_config
from vfm_ablate.tracking.ui import comparison_view


def _plan(tmp_path: Path, **sections: Any) -> SweepPlan:
    data = {"name": "lab", "base": tiny_base({"max_epochs": 1}), "datasets": {"sa": TINY_DATA, "sb": TINY_DATA}}
    return plan(parse_sweep({**data, **sections}, tmp_path / "lab.yaml"))


def test_an_alignment_sweep_names_each_method_and_leaves_out_what_all_share(tmp_path: Path) -> None:
    the_plan = _plan(
        tmp_path,
        axes={
            "alignment": [{}, {"input": "histogram"}, {"input": "zscore"}, {"features": "standardise"}],
            "data": [{"train": ["sa"], "target": ["sb"]}],
        },
        repeats=2,
    )
    names = [t.label.run_name for t in the_plan.trials]
    assert len(the_plan.trials) == 8 and len(set(names)) == 8  # none and histogram no longer share a name
    assert set(names) == {
        f"{train} · {method} · seed {seed}"
        for train, method in [("sa", "none"), ("sa", "histogram"), ("sa→sb", "zscore"), ("sa→sb", "standardise")]
        for seed in (0, 1)
    }
    assert all("tiny_vit_p14" not in n and "frozen" not in n for n in names)  # the same for every trial
    labels = the_plan.labels
    assert labels.shown == ("id", "train", "alignment", "seed")
    assert "backbone tiny_vit_p14" in labels.common and "regime frozen" in labels.common
    view = comparison_view("e1", ["iou_fg/sa"], labels.ui_columns)
    assert "tags.`vfm.alignment`" in view["selectedColumns"] and "params.`seed`" in view["selectedColumns"]
    assert "params.`backbone`" not in view["selectedColumns"]
    dry_run = describe_plan(the_plan)
    header = next(line for line in dry_run.splitlines() if line.startswith("id "))
    assert header.split() == ["id", "train", "alignment", "seed", "cpu", "gpu"]
    assert "same for every trial: backbone tiny_vit_p14, regime frozen" in dry_run


def test_a_search_names_its_samples_by_their_values(tmp_path: Path) -> None:
    the_plan = _plan(
        tmp_path,
        base=tiny_base({"max_epochs": 1}, regime="lora"),
        search={
            "num_samples": 2,
            "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "lora.alpha": {"uniform": [8, 64]}},
        },
    )
    [point] = the_plan.trials
    assert point.label.run_name == ""  # one grid point: only the sampled values tell its trials apart
    assert the_plan.labels.ui_columns == (("params", "optim.lr"), ("params", "lora.alpha"))
    sample = decode_config({**encode_config(point), SEARCH_KEY: {"optim.lr": 6.8123e-4, "lora.alpha": 48.0}})
    assert sample.run_name == "lr 6.8e-4 α 48" and sample.label == "lr 6.8e-4 α 48"
    other = decode_config({**encode_config(point), SEARCH_KEY: {"optim.lr": 2.5e-3, "lora.alpha": 12.25}})
    assert other.run_name != sample.run_name and other.trial_id != sample.trial_id


def test_a_search_over_grid_points_names_the_point_then_the_samples(tmp_path: Path) -> None:
    the_plan = _plan(
        tmp_path,
        base=tiny_base({"max_epochs": 1}, regime="lora"),
        axes={"lora.rank": [4, 8]},
        search={"num_samples": 2, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}},
    )
    names = [decode_config({**encode_config(p), SEARCH_KEY: {"optim.lr": 1e-3}}).run_name for p in the_plan.trials]
    assert names == ["r4 · lr 1.0e-3", "r8 · lr 1.0e-3"]


def test_any_other_axis_is_named_short_and_rules_hide_what_cannot_apply(tmp_path: Path) -> None:
    the_plan = _plan(
        tmp_path,
        axes={
            "optim.lr": [1e-4, 1e-3],
            "data.resize": [{"policy": "native"}, {"policy": "longest_edge", "target": 28}],
            "regime": ["frozen", "lora"],
        },
    )
    names = {t.label.run_name for t in the_plan.trials}
    assert "frozen · resize native · lr 1.0e-4" in names and "lora · resize longest 28 · lr 1.0e-3" in names
    assert len(names) == 8
    # the LoRA rank applies to lora trials only and is 16 for all of them: it tells nothing apart
    assert "rank" not in the_plan.labels.shown and all("r16" not in n for n in names)
    assert ("params", "optim.lr") in the_plan.labels.ui_columns
    assert ("params", "data.resize.policy") in the_plan.labels.ui_columns


def test_a_sweep_of_one_trial_still_names_it(tmp_path: Path) -> None:
    [trial] = _plan(tmp_path).trials
    assert trial.label.run_name == "tiny_vit_p14 · frozen · sa"
    assert trial.label.columns["backbone"] == "tiny_vit_p14"  # every setting stays in the columns (results.csv)
