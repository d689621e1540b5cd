"""IoU_fg from pixel totals, checked against scikit-learn's jaccard on the flattened pixels."""

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from vfm_ablate.trial.metrics import IoUAccumulator


def _random_masks(rng, n, shape, p):
    return [(rng.random(shape) < p).astype(np.int64) for _ in range(n)]


def test_dataset_iou_is_pixel_total_not_mean_of_images():
    rng = np.random.default_rng(0)
    preds = _random_masks(rng, 5, (16, 20), 0.3)
    gts = _random_masks(rng, 5, (16, 20), 0.3)
    gts[0][:] = 0  # an image with no foreground: a per-image mean would treat it specially
    acc = IoUAccumulator()
    for p, g in zip(preds, gts):
        acc.update("a", p, g)
    expected = jaccard_score(np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds]))
    assert acc.per_dataset()["a"] == pytest.approx(expected, rel=1e-6)
    per_image_mean = np.mean([jaccard_score(g.ravel(), p.ravel(), zero_division=0) for p, g in zip(preds, gts)])
    assert abs(acc.per_dataset()["a"] - per_image_mean) > 1e-3


def test_pooled_and_macro_differ_and_match_independent_computation():
    rng = np.random.default_rng(1)
    # a big dataset the model gets badly wrong and a small one it gets right: pooled is dominated by the big one
    big_gt = _random_masks(rng, 20, (32, 32), 0.1)
    big_pred = _random_masks(rng, 20, (32, 32), 0.1)
    small_gt = _random_masks(rng, 2, (32, 32), 0.4)
    small_pred = [g.copy() for g in small_gt]
    small_pred[0][0, :5] = 1 - small_pred[0][0, :5]
    acc = IoUAccumulator()
    for p, g in zip(big_pred, big_gt):
        acc.update("big", p, g)
    for p, g in zip(small_pred, small_gt):
        acc.update("small", p, g)
    m = acc.metrics()
    iou_big = jaccard_score(np.concatenate([g.ravel() for g in big_gt]), np.concatenate([p.ravel() for p in big_pred]))
    iou_small = jaccard_score(
        np.concatenate([g.ravel() for g in small_gt]), np.concatenate([p.ravel() for p in small_pred])
    )
    all_gt = np.concatenate([g.ravel() for g in big_gt + small_gt])
    all_pred = np.concatenate([p.ravel() for p in big_pred + small_pred])
    assert m["iou_fg/big"] == pytest.approx(iou_big, rel=1e-6)
    assert m["iou_fg/small"] == pytest.approx(iou_small, rel=1e-6)
    assert m["macro_iou_fg"] == pytest.approx((iou_big + iou_small) / 2, rel=1e-6)
    assert m["pooled_iou_fg"] == pytest.approx(jaccard_score(all_gt, all_pred), rel=1e-6)
    assert m["macro_iou_fg"] > m["pooled_iou_fg"] + 0.2


def test_single_dataset_reports_no_macro_or_pooled_and_shape_mismatch_is_an_error():
    acc = IoUAccumulator()
    acc.update("a", np.ones((4, 4), dtype=np.int64), np.ones((4, 4), dtype=np.int64))
    assert acc.metrics() == {"iou_fg/a": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="shape"):
        acc.update("a", np.ones((4, 4)), np.ones((4, 5)))
