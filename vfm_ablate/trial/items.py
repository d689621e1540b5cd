"""A trial's data: its datasets loaded, input-aligned, resized and normalised for the backbone, split into train /
val / test items, plus the unlabelled target items of domain adaptation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..alignment.intensity import InputAlignment, intensity_statistics, reference_pixels
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

    def own_images(self, spec: TrialSpec) -> TrainingImages:
        """Each train / target dataset's training images (train + validation, or the target's): what per-dataset
        statistics are estimated on; never a test image."""
        out: dict[str, list[Item]] = {}
        for name, items in zip(spec.data.train, self.train):
            out[name] = [*items, *(it for it in self.val if it.dataset == name)]
        for name, items in zip(spec.data.target, self.target):
            out[name] = list(items)
        return TrainingImages(out, self.loaded)


class TrainingImages(Mapping[str, list[Item]]):
    """Per dataset, images a statistic may be fitted on (feature standardisation, loss-level batches, the
    diagnostics' probe): its training, validation or unlabelled images, never one of its test images. Functions
    that fit statistics take this type, not a plain dict, and building it checks every image against its dataset's
    test split (by source: file, stack page or generated slice)."""

    def __init__(self, images: Mapping[str, list[Item]], loaded: Mapping[str, LoadedDataset]) -> None:
        for name, items in images.items():
            test = {s.source for s in loaded[name].test} if name in loaded else set()
            leaked = [it.source for it in items if it.source in test or it.dataset != name]
            if leaked:
                raise DataError(
                    f"statistics of dataset '{name}' would read {len(leaked)} image(s) of its test split or of another "
                    f"dataset (e.g. {leaked[0]}): statistics are fitted on training images only"
                )
        self._images = {name: list(items) for name, items in images.items()}

    def __getitem__(self, name: str) -> list[Item]:
        return self._images[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


def normalisation(spec: TrialSpec, entry: BackboneEntry) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for every backbone (the study's choice) unless the trial asks for the backbone's own."""
    if spec.data.normalisation == "backbone":
        return entry.mean, entry.std
    return IMAGENET_MEAN, IMAGENET_STD


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
    """The trial's input-level method, estimated on training images only (the reference dataset's for histogram
    matching, each train / target dataset's own for z-scoring)."""
    a = spec.alignment
    if a.input == "histogram":
        ref = spec.reference_dataset()
        assert ref is not None  # TrialSpec guarantees it
        slices = loaded[ref].train
        pixels = reference_pixels([s.image for s in slices], f"alignment.reference '{ref}'")
        return InputAlignment("histogram", reference=pixels, reference_range=slices[0].value_range)
    if a.input == "zscore":
        stats = {
            name: intensity_statistics([s.image for s in loaded[name].train], f"dataset '{name}' (z-scoring)")
            for name in [*spec.data.train, *spec.data.target]
        }
        return InputAlignment("zscore", statistics=stats)
    if a.input == "clahe":
        return InputAlignment("clahe", clip_limit=a.clahe_clip_limit, kernel_size=a.clahe_kernel)
    return InputAlignment()


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
