"""Forward passes and losses of a trial: the segmenter on items, through the frozen-feature cache when frozen.

Images of different sizes (paired Lucchi++ + VNC) are never zero-padded into one batch: a batch runs as
same-size groups and the per-image Dice losses are averaged.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from ..alignment.standardise import FeatureStandardiser
from ..config import TrialSpec
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from .features import FeatureCache, FeatureStore, backbone_fingerprint, weights_identity
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
    """Runs the segmenter on items; in the frozen regime the backbone part goes through the feature cache, and an
    attached feature standardiser sits between backbone and head."""

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
        self.align_layer = spec.alignment.layer if spec.alignment.loss != "none" else None
        self.cache: FeatureCache | None = None
        if spec.regime == "frozen":
            fingerprint = backbone_fingerprint(
                entry.model_dump(mode="json"), weights_identity(spec, entry), spec.precision
            )
            self.cache = FeatureCache(
                self._backbone_features, spec.feature_cache, fingerprint, spec.feature_cache_dir, feature_store
            )

    @property
    def standardiser(self) -> FeatureStandardiser | None:
        modules = self.model.alignment
        return getattr(modules, "standardiser", None) if modules is not None else None

    @torch.no_grad()
    def _backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model.features(images.to(self.device)).float()

    def backbone_features(self, items: list[Item]) -> torch.Tensor:
        """The backbone's grid for same-shaped items (cached when frozen), before any feature alignment."""
        if self.cache is not None:
            return torch.stack([self.cache.features(it.key, it.image) for it in items]).to(self.device)
        images = torch.stack([it.image for it in items]).to(self.device)
        return self.model.features(images)

    @property
    def caches_features(self) -> bool:
        """Frozen with a feature cache: each image's features are computed once and kept for the trial."""
        return self.cache is not None and self.cache.mode != "off"

    def extract_all(self, items: list[Item], progress: Callable[[int], None]) -> None:
        """Frozen: every item through the backbone once, before the first epoch, so that extraction is a phase of
        its own with progress (`progress(done)` after each image) and every epoch takes the same time. The
        features are the ones the first epoch would have extracted (a frozen backbone stays in eval mode)."""
        if self.cache is None or not self.caches_features:
            return
        for done, it in enumerate(items, 1):
            self.cache.features(it.key, it.image)
            progress(done)

    def head_input(self, items: list[Item]) -> torch.Tensor:
        """What the head receives: the backbone's grid, standardised per dataset when feature alignment is on."""
        feats = self.backbone_features(items)
        standardiser = self.standardiser
        return standardiser(feats, [it.dataset for it in items]) if standardiser is not None else feats

    def logits(self, items: list[Item]) -> torch.Tensor:
        """Logits for same-shaped items, stacked (callers group by shape: no zero padding, ever)."""
        out_size = tuple(items[0].image.shape[1:])
        with autocast(self.device, self.precision):
            logits = self.model.head_forward(self.head_input(items), out_size)
        return logits.float()


def by_shape(items: list[Item]) -> Iterator[list[Item]]:
    groups: dict[tuple[int, ...], list[Item]] = defaultdict(list)
    for it in items:
        groups[tuple(it.image.shape)].append(it)
    yield from groups.values()


AlignFeatures = list[tuple[list[Item], torch.Tensor]]  # per same-size group: its items and their feature grids


def batch_loss(
    fwd: Forward, loss_fn: DiceLoss, items: list[Item], collect: AlignFeatures | None = None
) -> torch.Tensor | None:
    """Mean per-image Dice loss over the labelled items (None when there are none); images of different sizes
    run as separate groups instead of padded. With `collect`, every item's features at the alignment layer (head
    input or bottleneck) are appended to it, unlabelled target items included (they never reach the Dice loss)."""
    total: torch.Tensor | float = 0.0
    labelled = 0
    for group in by_shape(items):
        rows = [i for i, it in enumerate(group) if it.mask is not None]
        out_size = tuple(group[0].image.shape[1:])
        with autocast(fwd.device, fwd.precision):
            feats = fwd.head_input(group)
            if collect is None:
                logits = fwd.model.head_forward(feats, out_size) if rows else None
            else:
                bottleneck = fwd.model.head.bottleneck(feats)
                collect.append((group, feats if fwd.align_layer == "head_input" else bottleneck))
                if rows and len(rows) < len(group):
                    bottleneck = bottleneck[rows]
                logits = fwd.model.head.decode(bottleneck, out_size) if rows else None
        if logits is None:
            continue
        target = torch.stack([group[i].mask for i in rows]).unsqueeze(1).to(fwd.device)  # type: ignore[misc]
        total = total + loss_fn(logits.float(), target) * len(rows)
        labelled += len(rows)
    if not labelled:
        return None
    return total / labelled  # type: ignore[return-value]


@torch.no_grad()
def validation_loss(fwd: Forward, loss_fn: DiceLoss, items: list[Item], batch_size: int) -> float:
    fwd.model.eval()
    losses = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        losses.append(float(batch_loss(fwd, loss_fn, chunk)) * len(chunk))  # type: ignore[arg-type]
    return sum(losses) / len(items)
