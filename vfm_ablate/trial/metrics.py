"""Foreground IoU from pixel totals over a whole test set (the study's IoU_fg), per dataset, macro and pooled.

IoU_fg = sum|pred ∩ gt| / (sum|pred ∪ gt| + 1e-7) over ALL pixels of a dataset — not a mean of per-image IoUs.
With several test datasets we report both the macro mean over datasets and the pixel-pooled IoU over their
union; the study called the pooled value "macro-average", we name each for what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..metric_names import MACRO_IOU, POOLED_IOU, iou_metric

EPS = 1e-7


@dataclass
class PixelTotals:
    """A dataset's foreground pixel counts: all IoU_fg needs (nothing else was ever reported)."""

    intersection: int = 0
    union: int = 0

    def iou_fg(self) -> float:
        return float(self.intersection / (self.union + EPS))


@dataclass
class IoUAccumulator:
    """Accumulates foreground pixel totals per dataset; call `update` once per predicted slice or batch."""

    totals: dict[str, PixelTotals] = field(default_factory=dict)

    def update(self, dataset: str, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """`pred` and `target`: label maps (foreground = 1) of equal shape; extra batch dims are fine."""
        p = torch.as_tensor(pred) == 1
        t = torch.as_tensor(target) == 1
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)} for '{dataset}'")
        tot = self.totals.setdefault(dataset, PixelTotals())
        tot.intersection += int((p & t).sum())
        tot.union += int((p | t).sum())

    def per_dataset(self) -> dict[str, float]:
        return {name: tot.iou_fg() for name, tot in self.totals.items()}

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """`iou_fg/<dataset>` always; `macro_iou_fg` and `pooled_iou_fg` when there are several datasets."""
        out = {prefix + iou_metric(name): v for name, v in self.per_dataset().items()}
        if len(self.totals) > 1:
            out[prefix + MACRO_IOU] = macro_iou(self.per_dataset())
            out[prefix + POOLED_IOU] = pooled_iou(self.totals.values())
        return out


def macro_iou(per_dataset: dict[str, float]) -> float:
    """Unweighted mean over datasets: each dataset counts once, whatever its pixel count."""
    return float(np.mean(list(per_dataset.values())))


def pooled_iou(totals: list[PixelTotals] | object) -> float:
    """IoU of the union of all pixels: dominated by the dataset with the most test pixels."""
    items = list(totals)  # type: ignore[arg-type]
    inter = sum(t.intersection for t in items)
    union = sum(t.union for t in items)
    return float(inter / (union + EPS))
