"""Alignment settings at the edge: combinations that make sense validate, the others are refused naming the setting,
misspelt method names get a suggestion, and settings that do not apply collapse in sweeps."""

from __future__ import annotations

from typing import Any

import pytest

from vfm_ablate.config import AlignmentSpec, TrialSpec, alignment_label
from vfm_ablate.errors import ConfigError
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import SweepSpec, parse_sweep
from vfm_ablate.validation import validate


def trial(**sections: Any) -> TrialSpec:
    data = {"backbone": "tiny_vit_p14", "data": {"train": ["synthetic_a"]}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(TrialSpec, data, "t.yaml")


def refusal(**sections: Any) -> str:
    with pytest.raises(ConfigError) as err:
        trial(**sections)
    return str(err.value)


UDA = {"train": ["synthetic_a"], "target": ["synthetic_b"]}


def sweep(data: dict, axes: dict) -> SweepSpec:
    base = {"backbone": "tiny_vit_p14", "weights": "random", "data": data}
    return parse_sweep({"name": "t", "base": base, "axes": axes}, "s.yaml")


def test_sensible_combinations_validate() -> None:
    both = trial(data=UDA, alignment={"input": "histogram", "features": "standardise"})
    assert both.reference_dataset() == "synthetic_a"
    assert both.data.test_datasets == ["synthetic_a", "synthetic_b"]  # the target's test split is tested
    full = trial(
        data={**UDA, "sampling": "balanced"},
        regime="lora",
        alignment={"input": "zscore", "features": "standardise", "loss": "dann", "schedule": "dann"},
    )
    assert full.batch_datasets() == ["synthetic_a", "synthetic_b"]
    assert alignment_label(full.alignment) == "zscore+standardise+dann(schedule=dann)"
    paired = trial(data={"train": ["synthetic_a", "synthetic_b"]}, alignment={"loss": "coral", "sample": "tokens"})
    assert paired.batch_datasets() == ["synthetic_a", "synthetic_b"]
    # a target only enters the batches under a loss-level method
    assert trial(data=UDA, alignment={"features": "standardise"}).batch_datasets() == ["synthetic_a"]
    assert trial(data=UDA, alignment={"input": "histogram", "reference": "target"}).reference_dataset() == "synthetic_b"


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"alignment": {"loss": "mmd"}}, "alignment.loss 'mmd' aligns two domains"),
        ({"alignment": {"loss": "dann"}, "data": {"train": ["synthetic_a"], "test": ["synthetic_b"]}}, "one dataset"),
        ({"alignment": {"input": "histogram", "reference": "target"}}, "alignment.reference 'target'"),
        ({"alignment": {"input": "histogram", "reference": "vnc"}}, "alignment.reference 'vnc'"),
        (
            {"alignment": {"features": "standardise"}, "data": {"train": ["synthetic_a"], "test": ["synthetic_b"]}},
            "alignment.features 'standardise' uses each dataset's own statistics",
        ),
        (
            {"alignment": {"input": "zscore"}, "data": {"train": ["synthetic_a"], "test": ["synthetic_b"]}},
            "alignment.input 'zscore'",
        ),
        ({"alignment": {"loss": "mmd", "layer": "head_input"}, "data": UDA}, "cannot move anything in the frozen"),
        ({"alignment": {"loss": "coral"}, "data": UDA}, "alignment.sample 'tokens'"),
        ({"data": {"train": ["synthetic_a"], "target": ["synthetic_a"]}}, "either labelled source data or"),
        (
            {"data": {**UDA, "sampling": "weighted", "weights": [1.0]}, "alignment": {"loss": "mmd"}},
            "one value per dataset in the batches (2",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_setting(sections: dict, expected: str) -> None:
    msg = refusal(**sections)
    assert expected in msg and msg.startswith("t.yaml: invalid TrialSpec")


def test_coral_on_pooled_features_works_with_two_images_per_domain_per_batch() -> None:
    ok = trial(data={**UDA, "sampling": "balanced"}, optim={"batch_size": 4}, alignment={"loss": "coral"})
    assert ok.alignment.sample == "pooled"


def test_misspelt_method_names_get_a_suggestion() -> None:
    msg = refusal(alignment={"input": "histogramm", "features": "standardize", "loss": "corall"})
    assert "alignment.input" in msg and "Did you mean 'histogram'?" in msg
    assert "Did you mean 'standardise'?" in msg and "Did you mean 'coral'?" in msg
    assert "Did you mean 'loss_weight'?" in refusal(alignment={"loss_weigth": 0.1})


def test_sweep_axes_over_alignment_collapse_options_that_do_not_apply() -> None:
    the_plan = plan(
        sweep(
            {**UDA, "test": ["synthetic_a", "synthetic_b"], "sampling": "balanced"},
            {
                "alignment.loss": ["none", "mmd"],
                "alignment.loss_weight": [0.1, 1.0],
                "alignment.input": ["none", "zscore"],
            },
        )
    )
    # none: loss_weight collapses (2 -> 1); none without zscore: the target is never read, so it is dropped too
    assert the_plan.num_trials == 6
    reasons = the_plan.collapse_reasons
    assert reasons["alignment.loss_weight dropped: not used with alignment.loss 'none'"] == 4
    assert reasons["data.target dropped: no alignment setting reads target images"] == 2
    assert reasons["sampling dropped for a single train dataset"] == 4  # the target is not in the batches
    unaligned = [t.spec for t in the_plan.trials if not t.spec.alignment.active]
    assert len(unaligned) == 1 and unaligned[0].data.target == []
    assert unaligned[0].data.test_datasets == ["synthetic_a", "synthetic_b"]
    mmd = [t.spec for t in the_plan.trials if t.spec.alignment.loss == "mmd"]
    assert sorted(s.alignment.loss_weight for s in mmd) == [0.1, 0.1, 1.0, 1.0]
    assert all(s.data.sampling == "balanced" for s in mmd)


def test_a_dropped_target_keeps_being_tested() -> None:
    specs = [t.spec for t in plan(sweep(UDA, {"alignment.input": ["none", "clahe"]})).trials]
    assert [s.data.test_datasets for s in specs] == [["synthetic_a", "synthetic_b"]] * 2
    assert all(s.data.target == [] for s in specs)


def test_an_empty_target_list_changes_no_trial_id() -> None:
    """A trial written out in full (`target: []`, e.g. a spec's model_dump) plans to the trial it is."""
    plain = plan(sweep({"train": ["synthetic_a"]}, {"regime": ["frozen", "lora"]})).trials
    explicit = plan(sweep({"train": ["synthetic_a"], "target": []}, {"regime": ["frozen", "lora"]})).trials
    assert [t.trial_id for t in explicit] == [t.trial_id for t in plain]
    assert all(t.spec.data.test is None for t in explicit)


def test_an_impossible_alignment_in_a_sweep_is_refused_before_ray_naming_the_trial() -> None:
    with pytest.raises(ConfigError) as err:
        plan(sweep({"train": ["synthetic_a"]}, {"alignment.loss": ["none", "mmd"]}))
    msg = str(err.value)
    assert "alignment.loss 'mmd' aligns two domains" in msg and "alignment.loss=mmd" in msg


def test_unused_options_follow_their_method() -> None:
    assert set(AlignmentSpec().unused_options()) == {
        "reference", "clahe_clip_limit", "clahe_kernel", "loss_weight", "schedule", "schedule_epochs", "layer",
        "sample", "max_tokens", "mmd_bandwidth", "dann_hidden",
    }  # fmt: skip
    dann = AlignmentSpec(loss="dann", schedule="dann", sample="tokens")
    assert set(dann.unused_options()) == {"reference", "clahe_clip_limit", "clahe_kernel", "mmd_bandwidth"}
    assert "schedule_epochs" in AlignmentSpec(loss="mmd").unused_options()


def test_every_method_table_has_one_implementation_per_method_name() -> None:
    """The facts table, the schema's choices and the implementation tables name the same methods, level by level."""
    import typing

    from vfm_ablate.alignment.intensity import INPUT_METHODS
    from vfm_ablate.config import ALIGNMENT_METHODS
    from vfm_ablate.trial.alignment import FEATURE_METHODS, LOSS_METHODS

    implementations = {"input": INPUT_METHODS, "features": FEATURE_METHODS, "loss": LOSS_METHODS}
    for level, facts in ALIGNMENT_METHODS.items():
        choices = set(typing.get_args(AlignmentSpec.model_fields[level].annotation))
        assert set(facts) == choices == set(implementations[level]), level
