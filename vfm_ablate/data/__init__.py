"""Dataset sources, mask normalisation, resizing, sampling and the synthetic EM generator.

Torch-free imports live here; `transforms` (torch) and `check`/`cli` are imported from their modules.
"""

from .entries import DatasetEntry, builtin_datasets, resolve_dataset
from .masks import MaskRule, normalise_mask, read_mask
from .sources import LoadedDataset, Slice, clear_cache, load_dataset

__all__ = [
    "DatasetEntry",
    "LoadedDataset",
    "MaskRule",
    "Slice",
    "builtin_datasets",
    "clear_cache",
    "load_dataset",
    "normalise_mask",
    "read_mask",
    "resolve_dataset",
]
