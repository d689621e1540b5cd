"""Validation hold-out and the natural / balanced / weighted batch regimes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vfm_ablate.data.sampling import epoch_batches, split_validation
from vfm_ablate.errors import ConfigError


@pytest.mark.parametrize("n,expected", [(2, 1), (5, 1), (17, 2), (20, 2), (165, 17), (148, 15)])
def test_split_validation_sizes(n: int, expected: int) -> None:
    train, val = split_validation(n, 0.1, split_seed=0)
    assert len(val) == expected
    assert sorted(train + val) == list(range(n)) and not set(train) & set(val)


def test_split_validation_is_seeded() -> None:
    assert split_validation(50, 0.1, 3) == split_validation(50, 0.1, 3)
    vals = {tuple(split_validation(50, 0.1, s)[1]) for s in range(10)}
    assert len(vals) > 5  # different split seeds hold out different images


def test_split_validation_needs_two_images() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        split_validation(1, 0.1, 0)


def test_natural_sees_every_item_once_shuffled() -> None:
    batches = epoch_batches([17, 3], "natural", 2, np.random.default_rng(0))
    items = [it for b in batches for it in b]
    assert len(batches) == 10 and all(len(b) == 2 for b in batches)
    assert sorted(items) == [(0, i) for i in range(17)] + [(1, i) for i in range(3)]
    again = epoch_batches([17, 3], "natural", 2, np.random.default_rng(0))
    other = epoch_batches([17, 3], "natural", 2, np.random.default_rng(1))
    assert again == batches and other != batches
    assert [b for b in epoch_batches([5], "natural", 2, np.random.default_rng(0))][-1].__len__() == 1


def test_balanced_one_plus_one() -> None:
    batches = epoch_batches([148, 17], "balanced", 2, np.random.default_rng(0))
    assert len(batches) == 148  # epoch length: the largest dataset seen once
    assert all(sorted(d for d, _ in b) == [0, 1] for b in batches)
    big = [i for b in batches for d, i in b if d == 0]
    small = Counter(i for b in batches for d, i in b if d == 1)
    assert sorted(big) == list(range(148))
    assert set(small) == set(range(17)) and max(small.values()) - min(small.values()) <= 1  # cycles evenly


def test_balanced_with_k_per_dataset() -> None:
    batches = epoch_batches([6, 4, 9], "balanced", 6, np.random.default_rng(0))
    assert len(batches) == 5  # ceil(9 / 2)
    assert all(Counter(d for d, _ in b) == {0: 2, 1: 2, 2: 2} for b in batches)
    with pytest.raises(ConfigError, match="multiple of 3"):
        epoch_batches([6, 4, 9], "balanced", 2, np.random.default_rng(0))


def test_weighted_follows_weights() -> None:
    batches = epoch_batches([500, 500], "weighted", 4, np.random.default_rng(0), weights=[3, 1])
    draws = Counter(d for b in batches for d, _ in b)
    assert sum(draws.values()) == 1000
    assert 0.70 < draws[0] / 1000 < 0.80
    assert all(0 <= i < 500 for b in batches for _, i in b)
    with pytest.raises(ConfigError, match="one weight per dataset"):
        epoch_batches([5, 5], "weighted", 2, np.random.default_rng(0), weights=[1])
    with pytest.raises(ConfigError, match="non-negative"):
        epoch_batches([5, 5], "weighted", 2, np.random.default_rng(0), weights=[1, -1])


def test_unknown_sampling() -> None:
    with pytest.raises(ConfigError, match="unknown sampling 'balance'"):
        epoch_batches([3], "balance", 2, np.random.default_rng(0))


@pytest.mark.parametrize("sizes", [[], [3, -1], [0, 0]])
def test_sizes_without_an_item_or_with_a_negative_one_are_refused(sizes: list[int]) -> None:
    with pytest.raises(ConfigError, match="at least one item"):
        epoch_batches(sizes, "natural", 2, np.random.default_rng(0))


@pytest.mark.parametrize(("sizes", "batch_size"), [([1], 2), ([3, 0], 2), ([3], 1)])
def test_one_item_an_empty_dataset_and_batches_of_one_make_natural_epochs(sizes: list[int], batch_size: int) -> None:
    batches = epoch_batches(sizes, "natural", batch_size, np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == [(d, i) for d, n in enumerate(sizes) for i in range(n)]
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_balanced_sampling_refuses_an_empty_dataset() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        epoch_batches([3, 0], "balanced", 2, np.random.default_rng(0))


def test_weights_below_one_and_a_zero_weight_on_an_empty_dataset_are_valid() -> None:
    batches = epoch_batches([0, 3, 2], "weighted", 2, np.random.default_rng(0), weights=[0.0, 0.25, 0.5])
    drawn = [d for b in batches for d, _ in b]
    assert len(drawn) == 5 and set(drawn) <= {1, 2}


@pytest.mark.parametrize(
    ("sizes", "weights", "expected"),
    [
        ([3, 2], [-0.5, 1.0], "non-negative"),
        ([3, 2], [float("inf"), 1.0], "finite"),
        ([3, 2], [0.0, 0.0], "not all zero"),
        ([0, 2], [1.0, 1.0], "positive weight but no items"),
    ],
)
def test_weights_that_cannot_draw_are_refused(sizes: list[int], weights: list[float], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        epoch_batches(sizes, "weighted", 2, np.random.default_rng(0), weights=weights)
