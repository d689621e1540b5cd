"""Label efficiency (`data.labelled`): the labelled images are a nested seeded draw, the rest of a dataset's
training images are unlabelled (their masks never read), validation comes from the labelled ones, 0 is zero-shot,
and trials that do not set it keep their ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.layouts import list_slices, seeded_test_indices
from vfm_ablate.data.sampling import hold_out, labelled_draw
from vfm_ablate.data.sources import clear_cache, load_dataset
from vfm_ablate.data.synthetic import write_folder
from vfm_ablate.errors import ConfigError, DataError
from vfm_ablate.metric_names import labelled_metric
from vfm_ablate.models.registry import get_entry
from vfm_ablate.sweep.cost.workload import sweep_workloads
from vfm_ablate.sweep.inputs import check_inputs
from vfm_ablate.sweep.plan import load_plan, plan
from vfm_ablate.sweep.spec import parse_sweep
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.files import CHECKPOINT_FILE
from vfm_ablate.trial.items import load_trial_data
from vfm_ablate.validation import validate

REPO = Path(__file__).resolve().parents[1]
SYNTH = {
    "src": DatasetEntry(name="src", layout="synthetic", domain="a", n_train=5, n_test=2, size=(40, 48), seed=3),
    "tgt": DatasetEntry(name="tgt", layout="synthetic", domain="b", n_train=9, n_test=2, size=(48, 48), seed=4),
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def spec(
    labelled: dict, alignment: dict | None = None, regime: str = "frozen", split_seed: int = 0, **data
) -> TrialSpec:
    """A two-epoch trial on `src` + `tgt` with `labelled` images of them."""
    return validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": regime,
            "data": {
                "train": ["src", "tgt"], "labelled": labelled, "resize": {"policy": "longest_edge", "target": 42},
                **data,
            },
            "optim": {"max_epochs": 2, "lr": 1e-3},
            "num_overlays": 0,
            "alignment": alignment or {},
            "device": "cpu",
            "split_seed": split_seed,
        },
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- the draw


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 300),
    split_seed=st.integers(0, 2**63 - 1),
    counts=st.lists(st.integers(0, 300), min_size=2, max_size=6),
    fractions=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=4),
)
def test_labelled_draws_are_nested_for_every_split_seed(n, split_seed, counts, fractions) -> None:
    counts = [min(k, n) for k in counts]
    draws = [set(labelled_draw(n, k, split_seed)) for k in [*counts, *fractions]]
    assert [len(d) for d in draws[: len(counts)]] == counts
    for a in draws:  # counts and fractions alike: each draw holds every smaller one
        for b in draws:
            assert a <= b or b < a
    assert labelled_draw(n, None, split_seed) == list(range(n)) == labelled_draw(n, "all", split_seed)


# docs/label_efficiency.md: a fraction f labels max(1, round(f * n)) images, halves rounded up
@pytest.mark.parametrize(
    ("n", "fraction", "count"), [(10, 0.1, 1), (10, 0.3, 3), (10, 0.25, 3), (9, 0.5, 5), (20, 0.01, 1), (7, 1.0, 7)]
)
def test_a_fraction_labels_the_documented_count(n: int, fraction: float, count: int) -> None:
    assert len(labelled_draw(n, fraction, 0)) == count


@pytest.mark.parametrize("labelled", [-1, "some", [2]])
def test_a_draw_refuses_what_is_no_count_fraction_or_all(labelled: object) -> None:
    with pytest.raises(ConfigError, match="expected a count, a fraction or 'all'"):
        labelled_draw(5, labelled, 0, "d")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "train", "val"), [(0, 0, 0), (1, 1, 0), (2, 1, 1), (3, 2, 1)])
def test_two_labelled_images_already_hold_one_out_for_validation(n: int, train: int, val: int) -> None:
    kept, held = hold_out(n, 0.2, 0)
    assert (len(kept), len(held)) == (train, val) and sorted(kept + held) == list(range(n))


@settings(max_examples=40, deadline=None)
@given(split_seed=st.integers(0, 2**32 - 1))
def test_loaded_labelled_sets_are_nested_and_the_rest_carries_no_mask(split_seed: int) -> None:
    """What a trial reads: for one split seed the k = 1 set of labelled slices is inside the k = 2 set, inside the
    k = 4 set; every other training slice comes without a mask; the images are the same ones in the same order."""
    full = load_dataset(SYNTH["tgt"], split_seed)
    sets = []
    for k in (1, 2, 4, 9):
        ds = load_dataset(SYNTH["tgt"], split_seed, labelled=k)
        assert len(ds.train) == k and len(ds.remainder) == 9 - k
        assert all(s.mask is not None for s in ds.train) and all(s.mask is None for s in ds.remainder)
        assert [s.image is f.image for s, f in zip(ds.training, full.training)] == [True] * 9
        sets.append({s.source for s in ds.train})
    assert sets[0] < sets[1] < sets[2] < sets[3]


def test_a_count_beyond_the_training_split_is_an_error_naming_the_dataset() -> None:
    with pytest.raises(DataError, match="10 labelled training images of 'tgt', which has 9"):
        load_dataset(SYNTH["tgt"], 0, labelled=10)


# --------------------------------------------------------------------------------------------- masks never read


def _folder_datasets(root: Path) -> dict[str, DatasetEntry]:
    """src (predefined split) and a VNC-like tgt: one labelled folder of 9, the test split drawn by the split seed."""
    src = write_folder(root / "src", "a", 5, 2, (40, 48), seed=3)
    write_folder(root / "tgt", "b", 6, 3, (48, 48), seed=4)
    for sub in ("images", "masks"):
        for f in sorted((root / "tgt" / "test" / sub).glob("*.png")):
            f.rename(root / "tgt" / "train" / sub / f"t{f.name}")
    tgt = DatasetEntry(
        name="tgt", layout="folder", path=str(root / "tgt"), image_dir="train/images", mask_dir="train/masks",
        test_count=3,
    )  # fmt: skip
    return {"src": src.model_copy(update={"name": "src"}), "tgt": tgt}


def _garbage_remainder_masks(entry: DatasetEntry, s: TrialSpec) -> int:
    """Overwrite the mask file of every training slice of `tgt` outside its labelled draw with bytes that are not
    even an image."""
    refs = list_slices(entry).labelled
    test = set(seeded_test_indices(len(refs), 3, s.split_seed))
    train = [r for i, r in enumerate(refs) if i not in test]
    keep = set(labelled_draw(len(train), s.data.labelled["tgt"], s.split_seed))
    rest = [r for i, r in enumerate(train) if i not in keep]
    for r in rest:
        r.mask.write_bytes(b"not a mask: garbage \x00\xff" * 7)
    return len(rest)


@pytest.mark.parametrize(
    ("regime", "alignment"),
    [("lora", {"input": "zscore", "features": "standardise", "loss": "mmd"}), ("frozen", {})],
    ids=["lora-zscore-standardise-mmd", "frozen-none"],
)
def test_remainder_masks_are_never_read_results_bit_identical_with_garbage(
    tmp_path: Path, regime: str, alignment: dict
) -> None:
    """The remainder's images join per-dataset statistics and (loss level) the batches, but a garbage mask file for
    each of them changes nothing: not a metric, not an epoch, not a weight."""
    entries = _folder_datasets(tmp_path / "data")
    s = spec({"tgt": 3}, alignment, regime, sampling="balanced", split_seed=1)
    clean = run_trial(s, tmp_path / "clean", datasets=entries)
    assert _garbage_remainder_masks(entries["tgt"], s) == 3  # 6 training slices, 3 labelled
    clear_cache()  # nothing read before may be reused: the second trial reads the files again
    garbage = run_trial(s, tmp_path / "garbage", datasets=entries)
    timing = ("train_time_s", "wall_time_s")
    assert {k: v for k, v in clean.metrics.items() if k not in timing} == {
        k: v for k, v in garbage.metrics.items() if k not in timing
    }
    assert [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in clean.history] == [
        {k: v for k, v in h.items() if k != "epoch_time_s"} for h in garbage.history
    ]
    a = torch.load(tmp_path / "clean" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "garbage" / CHECKPOINT_FILE, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clean.metrics[labelled_metric("tgt")] == 3 and clean.metrics[labelled_metric("src")] == 5
    assert "iou_fg/tgt" in clean.metrics


def test_masks_already_in_memory_are_dropped_for_the_remainder() -> None:
    full = load_dataset(SYNTH["tgt"], 0)  # this process read every mask (a fully labelled trial)
    part = load_dataset(SYNTH["tgt"], 0, labelled=2)
    assert all(s.mask is None for s in part.remainder) and len(part.remainder) == 7
    assert all(f.mask is not None for f in full.training)  # the shared slices themselves are untouched


def test_a_target_read_from_disk_keeps_its_datasets_intensity_range(tmp_path: Path) -> None:
    """12-bit data in 16-bit files: a target (no training mask read) is scaled by the same observed range as the
    fully labelled dataset, not by the dtype's 0..65535."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(100, 4000, (16, 16)).astype(np.uint16)).save(
                tmp_path / split / "images" / f"{i}.png"
            )
            Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).save(
                tmp_path / split / "masks" / f"{i}.png"
            )
    entry = DatasetEntry(
        name="deep", layout="folder", path=str(tmp_path), image_dir="train/images", mask_dir="train/masks",
        test_image_dir="test/images", test_mask_dir="test/masks",
    )  # fmt: skip
    target = load_dataset(entry, 0, labelled=0)
    clear_cache()
    labelled = load_dataset(entry, 0)
    ranges = {s.value_range for s in labelled.training + labelled.test}
    assert len(ranges) == 1 and next(iter(ranges))[1] < 4000
    assert {s.value_range for s in target.training + target.test} == ranges
    assert all(s.mask is None for s in target.training) and not target.train


# --------------------------------------------------------------------------------------------- the trial's data


def test_validation_comes_from_the_labelled_images_and_one_labelled_image_trains() -> None:
    entry = get_entry("tiny_vit_p14")
    four = load_trial_data(spec({"tgt": 4}), entry, SYNTH)
    labelled = {s.source for s in four.loaded["tgt"].train}
    used = [it for it in [*four.train[1], *four.val] if it.dataset == "tgt"]
    assert {it.source for it in used} == labelled and len(used) == 4
    assert any(it.dataset == "tgt" for it in four.val)
    one = load_trial_data(spec({"tgt": 1}), entry, SYNTH)
    assert len(one.train[1]) == 1 and not [it for it in one.val if it.dataset == "tgt"]
    assert one.labelled_counts(spec({"tgt": 1})) == {"src": 5, "tgt": 1}
    assert one.remainder == [[], []]  # no method embeds unlabelled images: they are not prepared
    with_loss = spec({"tgt": 1}, {"loss": "mmd"})
    aligned = load_trial_data(with_loss, entry, SYNTH)
    pools = aligned.batch_pools(with_loss)
    assert [len(p) for p in pools] == [4, 9] and sum(it.mask is None for it in pools[1]) == 8


def test_zero_shot_dataset_is_tested_never_trained_or_validated() -> None:
    zero = spec({"tgt": 0}, sampling="balanced")
    assert zero.batch_datasets() == ["src"] and "data.sampling" in zero.inapplicable_settings()
    data = load_trial_data(zero, get_entry("tiny_vit_p14"), SYNTH)
    assert data.train[1] == [] and {it.dataset for it in data.val} == {"src"}
    assert {it.dataset for it in data.test} == {"src", "tgt"}
    assert data.labelled_counts(zero)["tgt"] == 0
    aligned = spec({"tgt": 0}, {"loss": "mmd"})
    assert aligned.batch_datasets() == ["src", "tgt"]  # a loss-level method aligns its unlabelled images
    pools = load_trial_data(aligned, get_entry("tiny_vit_p14"), SYNTH).batch_pools(aligned)
    assert len(pools[1]) == 9 and all(it.mask is None for it in pools[1])


@pytest.mark.parametrize(
    ("labelled", "expected"),
    [
        ({"nope": 2}, "data.labelled names ['nope'], not in data.train"),
        ({"src": 0, "tgt": 0}, "nothing to train on"),
        ({"src": 1, "tgt": 0}, "leaves no validation image"),
        ({"tgt": 4.0}, "must be in (0, 1], got 4.0 (write the count as a whole number"),
        ({"tgt": -1}, "cannot be negative"),
        ({"tgt": "some"}, "expected a count of labelled training images"),
    ],
)
def test_bad_labelled_settings_are_refused_naming_them(labelled: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec(labelled)
    assert expected in str(info.value)


# --------------------------------------------------------------------------------------------- identity and sweeps

DEMO_IDS = [  # sweeps/demo.yaml's trial ids before data.labelled existed: they must never change
    "77af893e0757", "095331b75248", "375baea1a624", "990c6857e662", "dab8d991135c", "0dd140800d6a",
    "bae9edac3f2c", "0c3ba11b095f", "72386928487f", "82facd2acfb5", "a7d14b29d65c", "41f810dd6d83",
    "2f362520c4b0", "e061be87d1a5", "54142182114f", "ff6bea85bcb2",
]  # fmt: skip


def test_trials_that_do_not_set_it_keep_their_ids_and_all_is_the_default() -> None:
    assert [t.trial_id for t in load_plan(REPO / "sweeps" / "demo.yaml").trials] == DEMO_IDS
    plain = spec({})
    assert spec({"tgt": "all"}).trial_id() == spec({"tgt": 1.0}).trial_id() == plain.trial_id()
    assert spec({"tgt": 1}).trial_id() != plain.trial_id()  # a count of 1, not the fraction 1.0
    assert len({spec({"tgt": k}).trial_id() for k in (0, 1, 2, 0.5)}) == 4
    for s in (plain, spec({"tgt": 2}), spec({"tgt": 0.25})):
        assert TrialSpec.from_flat_params(s.flat_params()) == s


def test_a_labelled_axis_expands_collapses_zero_shot_sampling_and_is_checked_before_launch() -> None:
    data = {
        "name": "le",
        "base": {
            "backbone": "tiny_vit_p14", "weights": "random",
            "data": {"train": ["synthetic_a", "synthetic_b"], "sampling": "balanced"},
        },
        "axes": {"data.labelled.synthetic_b": [0, 1, 2, "all"]},
        "repeats": 2,
    }  # fmt: skip
    the_plan = plan(parse_sweep(data, "le.yaml"))
    by_k = {t.spec.data.labelled.get("synthetic_b", "all"): t.spec for t in the_plan.trials if t.spec.seed == 0}
    assert set(by_k) == {0, 1, 2, "all"} and the_plan.num_trials == 8
    assert by_k[0].data.sampling == "natural" and by_k[2].data.sampling == "balanced"  # zero-shot: one dataset
    no_axis = plan(parse_sweep({**data, "axes": {}}, "le.yaml"))
    assert {t.trial_id for t in no_axis.trials} <= {t.trial_id for t in the_plan.trials}
    work = {w.trial.spec.data.labelled.get("synthetic_b"): w for w in sweep_workloads(the_plan) if w.trial.spec.seed}
    assert work[2].train_images["synthetic_b"] + work[2].val_images["synthetic_b"] == 2
    assert work[0].train_images["synthetic_b"] == 0 and work[None].val_images["synthetic_b"] >= 1
    with pytest.raises(ConfigError, match="did you mean|Did you mean|not in data.train"):
        plan(parse_sweep({**data, "axes": {"data.labelled.synthetic_c": [1]}}, "le.yaml"))
    too_many = plan(parse_sweep({**data, "axes": {"data.labelled.synthetic_b": [500]}}, "le.yaml"))
    with pytest.raises(ConfigError, match="500 labelled training images of dataset 'synthetic_b', which has"):
        check_inputs(too_many.specs, too_many.backbones, too_many.datasets, "le.yaml")
