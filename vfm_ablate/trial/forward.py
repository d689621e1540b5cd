"""Forward passes and losses of a trial: the segmenter on items, through the frozen-feature cache when frozen.

Images of different sizes (paired Lucchi++ + VNC) are never zero-padded into one batch: a batch runs as
same-size groups and the per-image Dice losses are averaged.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ..config import TrialSpec
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from .features import FeatureCache, FeatureStore, backbone_fingerprint
from .items import Item

if TYPE_CHECKING:
    from monai.losses import DiceLoss


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dice_loss() -> DiceLoss:
    """The study's loss: MONAI Dice on softmax probabilities of both classes, targets one-hot encoded.

    MONAI is imported here, not at module level: `import monai` loads all of MONAI, and with it mlflow when
    that is installed (MONAI's MLflow handler), which the trial engine's modules must not pull in on import."""
    from monai.losses import DiceLoss

    return DiceLoss(softmax=True, to_onehot_y=True, include_background=True)


class Forward:
    """Runs the segmenter on items; in the frozen regime the backbone part goes through the feature cache."""

    def __init__(
        self,
        model: Segmenter,
        device: torch.device,
        spec: TrialSpec,
        entry: BackboneEntry,
        feature_store: FeatureStore | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = spec.precision
        self.cache: FeatureCache | None = None
        if spec.regime == "frozen":
            fingerprint = backbone_fingerprint(entry.model_dump(mode="json"), spec.weights, spec.precision)
            self.cache = FeatureCache(
                self._backbone_features, spec.feature_cache, fingerprint, spec.feature_cache_dir, feature_store
            )

    @torch.no_grad()
    def _backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model.features(images.to(self.device)).float()

    def logits(self, items: list[Item]) -> torch.Tensor:
        """Logits for same-shaped items, stacked (callers group by shape: no zero padding, ever)."""
        out_size = tuple(items[0].mask.shape)
        with autocast(self.device, self.precision):
            if self.cache is not None:
                feats = torch.stack([self.cache.features(it.key, it.image) for it in items]).to(self.device)
                logits = self.model.head_forward(feats, out_size)
            else:
                images = torch.stack([it.image for it in items]).to(self.device)
                logits = self.model(images, out_size)
        return logits.float()


def by_shape(items: list[Item]) -> Iterator[list[Item]]:
    groups: dict[tuple[int, ...], list[Item]] = defaultdict(list)
    for it in items:
        groups[tuple(it.image.shape)].append(it)
    yield from groups.values()


def batch_loss(fwd: Forward, loss_fn: DiceLoss, items: list[Item]) -> torch.Tensor:
    """Mean per-image Dice loss; images of different sizes are run as separate groups instead of padded."""
    total: torch.Tensor | float = 0.0
    for group in by_shape(items):
        logits = fwd.logits(group)
        target = torch.stack([it.mask for it in group]).unsqueeze(1).to(fwd.device)
        total = total + loss_fn(logits, target) * len(group)
    return total / len(items)  # type: ignore[return-value]


@torch.no_grad()
def validation_loss(fwd: Forward, loss_fn: DiceLoss, items: list[Item], batch_size: int) -> float:
    fwd.model.eval()
    losses = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        losses.append(float(batch_loss(fwd, loss_fn, chunk)) * len(chunk))
    return sum(losses) / len(items)
