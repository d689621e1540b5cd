"""A trial's data: its datasets loaded, resized and normalised for the backbone, split into train / val / test items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import TrialSpec
from ..data.entries import DatasetEntry, resolve_dataset
from ..data.sampling import split_validation
from ..data.sources import LoadedDataset, Slice, load_dataset
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, mask_to_tensor, target_size
from ..errors import DataError
from ..models.registry import BackboneEntry


@dataclass
class Item:
    """One prepared slice: network-sized image and mask tensors (CPU), plus the native mask for native-size eval."""

    key: str
    dataset: str
    image: torch.Tensor  # 3 x h x w float32, normalised
    mask: torch.Tensor  # h x w int64 (0/1)
    native_mask: np.ndarray | None
    source: str


@dataclass
class TrialData:
    """Train items per train dataset (the sampler draws across them), the validation hold-out, the test items."""

    train: list[list[Item]]
    val: list[Item]
    test: list[Item]
    loaded: dict[str, LoadedDataset]  # every dataset the trial reads, by name (diagnostics embed from these)
    entries: dict[str, DatasetEntry]  # and the entries they were read from (written to config.yaml)


def normalisation(spec: TrialSpec, entry: BackboneEntry) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for every backbone (the study's choice) unless the trial asks for the backbone's own."""
    if spec.data.normalisation == "backbone":
        return entry.mean, entry.std
    return IMAGENET_MEAN, IMAGENET_STD


def prepare_items(slices: list[Slice], dataset: str, split: str, entry: BackboneEntry, spec: TrialSpec) -> list[Item]:
    """Resize (patch multiples), normalise and tensorise labelled slices; a slice without a mask is an error."""
    mean, std = normalisation(spec, entry)
    items = []
    for i, s in enumerate(slices):
        if s.mask is None:
            raise DataError(
                f"{s.source}: dataset '{dataset}' {split} slice has no mask but is used for training/testing"
            )
        size = target_size(s.image.shape[0], s.image.shape[1], spec.data.resize, entry.patch_size)
        items.append(
            Item(
                key=f"{dataset}/{split}/{i}",
                dataset=dataset,
                image=image_to_tensor(s.image, size, mean, std, s.value_range),
                mask=mask_to_tensor(s.mask, size),
                native_mask=s.mask if spec.eval_native_resolution else None,
                source=s.source,
            )
        )
    return items


def load_trial_data(
    spec: TrialSpec, entry: BackboneEntry, datasets: dict[str, DatasetEntry] | None = None
) -> TrialData:
    """Every dataset the trial reads; per train dataset a validation hold-out drawn with the split seed."""
    entries = {name: resolve_dataset(name, datasets) for name in spec.dataset_names()}
    loaded = {name: load_dataset(e, spec.split_seed) for name, e in entries.items()}
    train: list[list[Item]] = []
    val: list[Item] = []
    for name in spec.data.train:
        prepared = prepare_items(loaded[name].train, name, "train", entry, spec)
        if len(prepared) < 2:
            raise DataError(
                f"dataset '{name}' has {len(prepared)} training slice(s); need at least 2 (train + validation)"
            )
        tr_idx, va_idx = split_validation(len(prepared), spec.data.val_fraction, spec.split_seed)
        train.append([prepared[i] for i in tr_idx])
        val.extend(prepared[i] for i in va_idx)
    test: list[Item] = []
    for name in spec.data.test_datasets:
        if not loaded[name].test:
            raise DataError(f"dataset '{name}' has no labelled test split")
        test.extend(prepare_items(loaded[name].test, name, "test", entry, spec))
    return TrialData(train=train, val=val, test=test, loaded=loaded, entries=entries)
