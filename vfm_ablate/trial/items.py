"""A trial's data: its datasets loaded, input-aligned, resized and normalised for the backbone, split into train /
val / test items, plus the unlabelled target items of domain adaptation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..alignment.intensity import InputAlignment, TrainingImages, estimate_input_alignment
from ..config import TrialSpec
from ..data.entries import DatasetEntry, resolve_dataset
from ..data.sampling import split_validation
from ..data.sources import LoadedDataset, Slice, load_dataset
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, mask_to_tensor, target_size
from ..errors import DataError
from ..models.registry import BackboneEntry


@dataclass
class Item:
    """One prepared slice: network-sized image and mask tensors (CPU), plus the native mask for native-size eval.
    An unlabelled target item has no mask at all."""

    key: str
    dataset: str
    image: torch.Tensor  # 3 x h x w float32, normalised
    mask: torch.Tensor | None  # h x w int64 (0/1); None: an unlabelled target image
    native_mask: np.ndarray | None
    source: str


@dataclass
class TrialData:
    """Train items per train dataset (the sampler draws across them), the validation hold-out, the test items, and
    per target dataset its unlabelled training images."""

    train: list[list[Item]]
    val: list[Item]
    test: list[Item]
    loaded: dict[str, LoadedDataset]  # every dataset the trial reads, by name (diagnostics embed from these)
    entries: dict[str, DatasetEntry]  # and the entries they were read from (written to config.yaml)
    target: list[list[Item]]  # per data.target dataset, its training images without masks
    align: InputAlignment  # the input-level alignment every item went through

    def own_images(self, spec: TrialSpec) -> dict[str, list[Item]]:
        """Each train / target dataset's training images (train + validation, or the target's): what per-dataset
        statistics are estimated on; never a test image."""
        out: dict[str, list[Item]] = {}
        for name, items in zip(spec.data.train, self.train):
            out[name] = [*items, *(it for it in self.val if it.dataset == name)]
        for name, items in zip(spec.data.target, self.target):
            out[name] = list(items)
        return out


# data.normalisation -> (mean, std) per channel: ImageNet's for every backbone (the study's choice), or its own
NORMALISATIONS: dict[str, Callable[[BackboneEntry], tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "imagenet": lambda entry: (IMAGENET_MEAN, IMAGENET_STD),
    "backbone": lambda entry: (entry.mean, entry.std),
}


def normalisation(spec: TrialSpec, entry: BackboneEntry) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return NORMALISATIONS[spec.data.normalisation](entry)


def prepare_items(
    slices: list[Slice],
    dataset: str,
    split: str,
    entry: BackboneEntry,
    spec: TrialSpec,
    align: InputAlignment | None = None,
    *,
    labelled: bool = True,
) -> list[Item]:
    """Input-align, resize (patch multiples), normalise and tensorise slices; a labelled split without a mask is an
    error, an unlabelled one never looks at masks."""
    align = align or InputAlignment()
    items = []
    for i, s in enumerate(slices):
        if labelled and s.mask is None:
            raise DataError(
                f"{s.source}: dataset '{dataset}' {split} slice has no mask but is used for training/testing"
            )
        size = target_size(s.image.shape[0], s.image.shape[1], spec.data.resize, entry.patch_size)
        value_range = align.value_range(s.value_range)
        mean, std = align.normalisation(dataset, s.image.dtype, normalisation(spec, entry), value_range)
        items.append(
            Item(
                key=f"{dataset}/{split}/{i}",
                dataset=dataset,
                image=image_to_tensor(align.pixels(s.image), size, mean, std, value_range),
                mask=mask_to_tensor(s.mask, size) if labelled else None,  # type: ignore[arg-type]
                native_mask=s.mask if labelled and spec.eval_native_resolution else None,
                source=s.source,
            )
        )
    return items


def input_alignment(spec: TrialSpec, loaded: dict[str, LoadedDataset]) -> InputAlignment:
    """The trial's input-level method, estimated on training images only: each train / target dataset's training
    split (the histogram reference is one of them)."""
    own = [*spec.data.train, *spec.data.target]
    training = TrainingImages(
        images={name: [s.image for s in loaded[name].train] for name in own},
        value_ranges={name: loaded[name].train[0].value_range if loaded[name].train else None for name in own},
        reference=spec.reference_dataset(),
    )
    return estimate_input_alignment(spec.alignment, training)


def load_trial_data(
    spec: TrialSpec, entry: BackboneEntry, datasets: dict[str, DatasetEntry] | None = None
) -> TrialData:
    """Every dataset the trial reads; per train dataset a validation hold-out drawn with the split seed. Target
    datasets are loaded without their training masks (never read from disk)."""
    entries = {name: resolve_dataset(name, datasets) for name in spec.dataset_names()}
    targets = set(spec.data.target)
    loaded = {name: load_dataset(e, spec.split_seed, train_masks=name not in targets) for name, e in entries.items()}
    align = input_alignment(spec, loaded)
    train: list[list[Item]] = []
    val: list[Item] = []
    for name in spec.data.train:
        prepared = prepare_items(loaded[name].train, name, "train", entry, spec, align)
        if len(prepared) < 2:
            raise DataError(
                f"dataset '{name}' has {len(prepared)} training slice(s); need at least 2 (train + validation)"
            )
        tr_idx, va_idx = split_validation(len(prepared), spec.data.val_fraction, spec.split_seed)
        train.append([prepared[i] for i in tr_idx])
        val.extend(prepared[i] for i in va_idx)
    target: list[list[Item]] = []
    for name in spec.data.target:
        if not loaded[name].train:
            raise DataError(f"target dataset '{name}' has no training images")
        target.append(prepare_items(loaded[name].train, name, "target", entry, spec, align, labelled=False))
    test: list[Item] = []
    for name in spec.data.test_datasets:
        if not loaded[name].test:
            raise DataError(f"dataset '{name}' has no labelled test split")
        test.extend(prepare_items(loaded[name].test, name, "test", entry, spec, align))
    return TrialData(train=train, val=val, test=test, loaded=loaded, entries=entries, target=target, align=align)
