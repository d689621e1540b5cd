"""Which training images carry labels (`data.labelled`), the validation hold-out, and the order in which training
items form batches (single or paired datasets).

Labelled draw: of a dataset's n training images (after its test split), the labelled ones are
``sorted(numpy.random.default_rng([split_seed, 4]).permutation(n)[:k])``: the first k of one permutation per split
seed, so the draws are nested (for one split seed the k = 2 set contains the k = 1 set, and so on); k is a count,
or a fraction f of n as max(1, round(f * n)). The validation hold-out is then drawn from the k labelled images
(`hold_out`).

Regimes (``epoch_batches``), batches are lists of (dataset index, item index):

- ``natural``: every item of every dataset exactly once, concatenated and
  shuffled, cut into batches of ``batch_size`` (the last batch may be smaller).
  In the paired regime the larger dataset dominates, as in the study.
- ``balanced`` ("1+1"): every batch holds ``k = batch_size / D`` items of each
  of the D datasets (batch_size must be a multiple of D; batch 2 with two
  datasets is the study's 1+1). An epoch is ``ceil(max(sizes) / k)`` batches: the
  largest dataset is seen once, each smaller one cycles (reshuffled at each
  pass), so small datasets are repeated rather than large ones truncated.
- ``weighted``: ``sum(sizes)`` draws per epoch (same length as natural); each
  draw picks a dataset with probability weight / sum(weights), then the next
  item of that dataset's shuffled cycle (reshuffled when exhausted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..config import balanced_share
from ..errors import ConfigError, DataError

VALIDATION_STREAM = 2  # rng stream tag of the validation hold-out (the seeded test split uses 1)
LABELLED_STREAM = 4  # rng stream tag of the labelled draw (3: alignment's token subsampling)


def labelled_count(labelled: int | float | str | None, n: int, dataset: str = "dataset") -> int:
    """How many of `n` training images carry labels under a `data.labelled` value (None / 'all': every one)."""
    if labelled is None or labelled == "all":
        return n
    if isinstance(labelled, float):
        return min(n, max(1, math.floor(labelled * n + 0.5)))
    if not isinstance(labelled, int) or labelled < 0:
        raise ConfigError(f"data.labelled of '{dataset}': expected a count, a fraction or 'all', got {labelled!r}")
    if labelled > n:
        raise DataError(
            f"data.labelled asks for {labelled} labelled training images of '{dataset}', which has {n} (after its "
            "test split)"
        )
    return labelled


def labelled_draw(n: int, labelled: int | float | str | None, split_seed: int, dataset: str = "dataset") -> list[int]:
    """The indices (sorted) of the training images that carry labels: the first k of one seeded permutation of n,
    so for one split seed every draw contains the smaller ones."""
    k = labelled_count(labelled, n, dataset)
    perm = np.random.default_rng([split_seed, LABELLED_STREAM]).permutation(n)
    return sorted(int(i) for i in perm[:k])


def hold_out(n: int, fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """The validation hold-out of a dataset's n labelled training images: `split_validation` from 2 images on; a
    single labelled image trains (nothing held out), none gives nothing."""
    if n < 2:
        return list(range(n)), []
    return split_validation(n, fraction, split_seed)


def split_validation(n: int, fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """Hold out round(fraction * n) (at least 1) of n training items, seeded: (train_idx, val_idx), sorted."""
    if n < 2:
        raise ConfigError(f"a validation hold-out needs at least 2 training images, got {n}")
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = min(n - 1, max(1, math.floor(n * fraction + 0.5)))
    perm = np.random.default_rng([split_seed, VALIDATION_STREAM]).permutation(n)
    val = sorted(int(i) for i in perm[:n_val])
    train = sorted(int(i) for i in perm[n_val:])
    return train, val


class _Cycle:
    """Endless shuffled passes over range(n): each pass is a fresh permutation."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng, self.order, self.pos = n, rng, np.empty(0, dtype=np.int64), 0

    def next(self) -> int:
        if self.pos >= len(self.order):
            self.order, self.pos = self.rng.permutation(self.n), 0
        self.pos += 1
        return int(self.order[self.pos - 1])


def _chunk(items: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def epoch_batches(
    sizes: Sequence[int],
    sampling: str,
    batch_size: int,
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
) -> list[list[tuple[int, int]]]:
    """One epoch's batches of (dataset index, item index) under `sampling`; see the module docstring."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 0 for s in sizes) or sum(sizes) == 0:
        raise ConfigError(f"epoch_batches needs dataset sizes with at least one item, got {sizes}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if sampling == "natural":
        items = [(d, i) for d, n in enumerate(sizes) for i in range(n)]
        order = rng.permutation(len(items))
        return _chunk([items[j] for j in order], batch_size)
    if sampling == "balanced":
        n_ds = len(sizes)
        try:
            k = balanced_share(batch_size, n_ds)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        empty = [d for d, n in enumerate(sizes) if n == 0]
        if empty:
            raise ConfigError(f"balanced sampling needs every dataset non-empty; dataset(s) {empty} have no items")
        cycles = [_Cycle(n, rng) for n in sizes]
        n_batches = math.ceil(max(sizes) / k)
        return [[(d, cycles[d].next()) for d in range(n_ds) for _ in range(k)] for _ in range(n_batches)]
    if sampling == "weighted":
        if weights is None or len(weights) != len(sizes):
            raise ConfigError(f"weighted sampling needs one weight per dataset ({len(sizes)}), got {weights}")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ConfigError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
        bad = [d for d, n in enumerate(sizes) if n == 0 and w[d] > 0]
        if bad:
            raise ConfigError(f"dataset(s) {bad} have a positive weight but no items")
        cycles = [_Cycle(n, rng) for n in sizes]
        picks = rng.choice(len(sizes), size=sum(sizes), p=w / w.sum())
        return _chunk([(int(d), cycles[d].next()) for d in picks], batch_size)
    raise ConfigError(f"unknown sampling '{sampling}'; expected natural, balanced or weighted")
