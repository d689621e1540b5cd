"""A trial's data: its datasets loaded, input-aligned, resized and normalised for the backbone, split into train /
val / test items, plus the unlabelled items: a target's training images, and a train dataset's beyond
`data.labelled` (masks never read, see data/sources)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..alignment.intensity import InputAlignment, TrainingImages, estimate_input_alignment
from ..config import TrialSpec
from ..data.entries import DatasetEntry, resolve_dataset
from ..data.sampling import hold_out
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
    the unlabelled items: per target dataset its training images, per train dataset those beyond data.labelled."""

    train: list[list[Item]]  # per data.train dataset, its labelled training items (validation held out)
    val: list[Item]
    test: list[Item]
    loaded: dict[str, LoadedDataset]  # every dataset the trial reads, by name (diagnostics embed from these)
    entries: dict[str, DatasetEntry]  # and the entries they were read from (written to config.yaml)
    target: list[list[Item]]  # per data.target dataset, its training images without masks
    align: InputAlignment  # the input-level alignment every item went through
    # per data.train dataset, its training images outside data.labelled, without masks (prepared where an alignment
    # method embeds unlabelled images: `AlignmentSpec.embeds_unlabelled_images`)
    remainder: list[list[Item]]

    def unlabelled(self, spec: TrialSpec) -> dict[str, list[Item]]:
        """Each dataset's unlabelled training items: a target's, a train dataset's beyond data.labelled."""
        return {**dict(zip(spec.data.train, self.remainder)), **dict(zip(spec.data.target, self.target))}

    def own_images(self, spec: TrialSpec) -> TrainingItems:
        """Each train / target dataset's training images (train + validation + unlabelled, or the target's): what
        per-dataset statistics are estimated on; never a test image."""
        out: dict[str, list[Item]] = {}
        for name, items, rest in zip(spec.data.train, self.train, self.remainder):
            out[name] = [*items, *(it for it in self.val if it.dataset == name), *rest]
        for name, items in zip(spec.data.target, self.target):
            out[name] = list(items)
        return TrainingItems(out, self.loaded)

    def batch_pools(self, spec: TrialSpec) -> list[list[Item]]:
        """What each of `spec.batch_datasets()` puts in the batches: its labelled training items and, under a
        loss-level alignment (which aligns images, labelled or not), its unlabelled ones."""
        labelled = dict(zip(spec.data.train, self.train))
        unlabelled = self.unlabelled(spec) if spec.alignment.on("loss") else {}
        return [[*labelled.get(name, []), *unlabelled.get(name, [])] for name in spec.batch_datasets()]

    def labelled_counts(self, spec: TrialSpec) -> dict[str, int]:
        """Per train dataset, its labelled training images (validation included): data.labelled resolved."""
        return {name: len(self.loaded[name].labelled) for name in spec.data.train}


class TrainingItems(Mapping[str, list[Item]]):
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
        images={name: [s.image for s in loaded[name].training] for name in own},
        value_ranges={name: loaded[name].training[0].value_range if loaded[name].training else None for name in own},
        reference=spec.reference_dataset(),
    )
    return estimate_input_alignment(spec.alignment, training)


def load_trial_data(
    spec: TrialSpec, entry: BackboneEntry, datasets: dict[str, DatasetEntry] | None = None
) -> TrialData:
    """Every dataset the trial reads; per train dataset its labelled images (data.labelled) and a validation
    hold-out of them, drawn with the split seed. Target datasets, and a train dataset's images beyond
    data.labelled, are loaded without their training masks (never read from disk)."""
    entries = {name: resolve_dataset(name, datasets) for name in spec.dataset_names()}
    labelled = {**dict.fromkeys(spec.data.target, 0), **spec.data.labelled}
    loaded = {
        name: load_dataset(e, spec.split_seed, labelled=labelled.get(name)) for name, e in entries.items()
    }
    align = input_alignment(spec, loaded)
    train: list[list[Item]] = []
    val: list[Item] = []
    remainder: list[list[Item]] = []
    for name in spec.data.train:
        prepared = prepare_items(loaded[name].train, name, "train", entry, spec, align)
        if name not in spec.data.labelled and len(prepared) < 2:
            raise DataError(
                f"dataset '{name}' has {len(prepared)} training slice(s); need at least 2 (train + validation)"
            )
        tr_idx, va_idx = hold_out(len(prepared), spec.data.val_fraction, spec.split_seed)
        train.append([prepared[i] for i in tr_idx])
        val.extend(prepared[i] for i in va_idx)
        rest = loaded[name].remainder if spec.alignment.embeds_unlabelled_images() else []  # (pixels: `align`)
        remainder.append(prepare_items(rest, name, "unlabelled", entry, spec, align, labelled=False))
    if not val:
        raise DataError(
            f"no validation image: data.labelled {spec.data.labelled} leaves each train dataset at most one labelled "
            "image, which trains; give one at least 2"
        )
    target: list[list[Item]] = []
    for name in spec.data.target:
        if not loaded[name].training:
            raise DataError(f"target dataset '{name}' has no training images")
        target.append(prepare_items(loaded[name].training, name, "target", entry, spec, align, labelled=False))
    test: list[Item] = []
    for name in spec.data.test_datasets:
        if not loaded[name].test:
            raise DataError(f"dataset '{name}' has no labelled test split")
        test.extend(prepare_items(loaded[name].test, name, "test", entry, spec, align))
    return TrialData(
        train=train, val=val, test=test, loaded=loaded, entries=entries, target=target, align=align,
        remainder=remainder,
    )  # fmt: skip
