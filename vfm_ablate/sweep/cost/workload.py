"""What each planned trial will compute, from the sweep file and the datasets' listings (no pixels trained on):
images per split, network input sizes, and the (size, group size) of every training step of an epoch.

Shared by `vfm-ablate calibrate` (which configurations to measure) and the `--dry-run` estimate (how many of
each). The step groups come from the trial's own sampler (`data.sampling.epoch_batches`, epoch 0, the trial's
seed) split into same-size groups as `trial.forward.batch_loss` runs them, so paired data of two sizes is
counted as the trial will run it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...calibration.records import ConfigKey
from ...data.entries import DatasetEntry
from ...data.images import read_image
from ...data.layouts import list_slices
from ...data.sampling import epoch_batches, hold_out, labelled_count
from ...data.transforms import target_size
from ...errors import DataError
from ..plan import PlannedTrial, SweepPlan

Size = tuple[int, int]


@dataclass(frozen=True)
class DatasetShape:
    """A labelled dataset's slice counts and native slice size (of its first slice: a dataset is one size)."""

    name: str
    n_train: int  # labelled training slices, before the validation hold-out
    n_test: int
    height: int
    width: int


@dataclass(frozen=True)
class TrialWorkload:
    trial: PlannedTrial
    sizes: dict[str, Size]  # dataset -> network input size (height, width)
    train_images: dict[str, int]  # labelled (data.labelled), after the validation hold-out
    val_images: dict[str, int]
    # unlabelled training images: all of a target's (domain alignment), and a train dataset's beyond data.labelled
    # where an alignment method embeds them
    target_images: dict[str, int]
    test_images: dict[str, int]
    step_groups: Counter[tuple[int, int, int]]  # (height, width, images in the group) -> groups per epoch

    @property
    def extracted_images(self) -> dict[str, int]:
        """Frozen: every image the feature cache sees once (train + validation + target + test)."""
        out = Counter(self.train_images) + Counter(self.val_images) + Counter(self.target_images)
        out += Counter(self.test_images)
        return dict(out)

    def feature_key(self, dataset: str) -> tuple[str, str, str, str, Size]:
        """What one shared feature store entry depends on: backbone, weights, precision, dataset, input size."""
        s = self.trial.spec
        return (s.backbone, s.weights, s.precision, dataset, self.sizes[dataset])


def dataset_shape(entry: DatasetEntry) -> DatasetShape:
    """Counts and native size from the listing and one image read (a missing dataset is an error naming it)."""
    if entry.layout == "synthetic":
        return DatasetShape(entry.name, entry.n_train, entry.n_test, entry.size[0], entry.size[1])
    listing = list_slices(entry)
    if listing.problems:
        raise DataError(f"dataset '{entry.name}': {listing.problems[0]}")
    if not listing.labelled:
        raise DataError(f"dataset '{entry.name}' has no labelled slices to train or test on")
    first = listing.labelled[0]
    h, w = read_image(first.image, first.image_page).shape[:2]
    if listing.test is not None:
        return DatasetShape(entry.name, len(listing.labelled), len(listing.test), int(h), int(w))
    n = len(listing.labelled)
    return DatasetShape(entry.name, n - listing.test_count, listing.test_count, int(h), int(w))


def dataset_shapes(the_plan: SweepPlan, given: dict[str, DatasetShape] | None = None) -> dict[str, DatasetShape]:
    """The shape of every train/test dataset the trials use; `given` (e.g. the full Lucchi++) wins."""
    out = dict(given or {})
    for s in the_plan.specs:
        for name in [*s.data.train, *s.data.target, *s.data.test_datasets]:
            if name not in out:
                out[name] = dataset_shape(the_plan.datasets[name])
    return out


def trial_workload(the_plan: SweepPlan, trial: PlannedTrial, shapes: dict[str, DatasetShape]) -> TrialWorkload:
    s = trial.spec
    entry = the_plan.backbones[s.backbone]
    names = list(dict.fromkeys([*s.data.train, *s.data.target, *s.data.test_datasets]))
    sizes = {n: target_size(shapes[n].height, shapes[n].width, s.data.resize, entry.patch_size) for n in names}
    train, val, target = {}, {}, {}
    for name in s.data.train:
        n = shapes[name].n_train
        k = labelled_count(s.data.labelled.get(name), n, name)
        tr, va = hold_out(k, s.data.val_fraction, s.split_seed)
        train[name], val[name] = len(tr), len(va)
        if k < n and s.alignment.embeds_unlabelled_images():
            target[name] = n - k
    target.update({name: shapes[name].n_train for name in s.data.target})
    test = {name: shapes[name].n_test for name in s.data.test_datasets}
    pools = s.batch_datasets()  # as trial/items.TrialData.batch_pools: labelled, + unlabelled under a loss level
    loss = s.alignment.on("loss")
    rng = np.random.default_rng([s.seed, 0])  # epoch 0 of the trial's own batch order
    counts = [train.get(n, 0) + (target.get(n, 0) if loss else 0) for n in pools]
    batches = epoch_batches(counts, s.data.sampling, s.optim.batch_size, rng, s.data.weights)
    groups: Counter[tuple[int, int, int]] = Counter()
    for batch in batches:
        per_size = Counter(sizes[pools[d]] for d, _ in batch)
        for (h, w), n in per_size.items():
            groups[(h, w, n)] += 1
    return TrialWorkload(trial, sizes, train, val, target, test, groups)


def sweep_workloads(the_plan: SweepPlan, given: dict[str, DatasetShape] | None = None) -> list[TrialWorkload]:
    shapes = dataset_shapes(the_plan, given)
    return [trial_workload(the_plan, t, shapes) for t in the_plan.trials]


def config_keys(workloads: list[TrialWorkload], minor_share: float = 0.25) -> list[ConfigKey]:
    """The configurations to calibrate: each trial's input sizes at its batch size, plus smaller groups that
    make up more than `minor_share` of its steps (paired data of two sizes); rarer ones (an odd last batch) are
    scaled per image from the nearest measured batch size."""
    keys: dict[str, ConfigKey] = {}
    for w in workloads:
        s = w.trial.spec
        total = sum(w.step_groups.values()) or 1
        wanted = {(h, wd, s.optim.batch_size) for h, wd in w.sizes.values()}
        wanted |= {(h, wd, n) for (h, wd, n), count in w.step_groups.items() if count / total > minor_share}
        for h, wd, n in sorted(wanted):
            key = ConfigKey.of(s, h, wd, n)
            keys.setdefault(key.label(), key)
    return list(keys.values())
