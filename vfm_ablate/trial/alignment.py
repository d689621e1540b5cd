"""Domain alignment inside a trial: the modules it trains or estimates (attached to the segmenter), the
per-dataset feature statistics, and the loss-level term of each training batch.

Feature statistics (`alignment.features: standardise`) are estimated on every train / target dataset's own
training images (never a test image) in eval mode: once for a frozen backbone (from the feature cache, so once per
backbone, dataset, resize and input), and for LoRA / full before the first epoch and again after every epoch's
training steps (before validation), so each epoch trains, and each validation scores, with statistics of the
backbone as it is then. They are buffers of the segmenter's trainable state: the best-validation state carries the
statistics it was validated with, and the test uses exactly those.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..alignment.losses import DomainClassifier, coral_loss, gaussian_mmd, grad_reverse, scheduled_weight
from ..alignment.standardise import ChannelMoments, FeatureStandardiser
from ..config import TrialSpec
from ..models.head import HEAD_CHANNELS
from ..models.segmenter import Segmenter
from .forward import AlignFeatures, Forward
from .items import TrainingImages

ALIGN_STREAM = 3  # rng stream tag of the token subsampling (seeded per seed, epoch and batch)


class AlignmentModules(nn.Module):
    """What a trial adds to the segmenter for alignment: per-dataset feature statistics and DANN's classifier."""

    def __init__(self, standardiser: FeatureStandardiser | None, classifier: DomainClassifier | None) -> None:
        super().__init__()
        self.standardiser = standardiser
        self.classifier = classifier


def attach_alignment(model: Segmenter, spec: TrialSpec, statistics_datasets: list[str]) -> None:
    """Build the trial's alignment modules onto `model` (nothing when no feature- or DANN-level method is on).

    Call it right after `build_segmenter` and before creating the optimiser: the classifier's initialisation draws
    from the seeded torch RNG and its parameters must be optimised."""
    a = spec.alignment
    dim = model.entry.embed_dim
    standardiser = FeatureStandardiser(statistics_datasets, dim) if a.features == "standardise" else None
    classifier = None
    if a.loss == "dann":
        width = dim if a.layer == "head_input" else HEAD_CHANNELS[0]
        classifier = DomainClassifier(width, len(spec.batch_datasets()), a.dann_hidden)
    if standardiser is not None or classifier is not None:
        device = next(model.parameters()).device
        model.attach_alignment(AlignmentModules(standardiser, classifier).to(device))


@torch.no_grad()
def estimate_feature_statistics(fwd: Forward, images: TrainingImages) -> None:
    """Per-channel mean / std of each dataset's backbone tokens on its own training images, into the standardiser."""
    if not isinstance(images, TrainingImages):  # the type that guarantees no test image is in the statistics
        raise TypeError(f"feature statistics take TrainingImages, got {type(images).__name__}")
    standardiser = fwd.standardiser
    if standardiser is None:
        return
    was_training = fwd.model.training
    fwd.model.eval()
    try:
        for name, items in images.items():
            moments = ChannelMoments(fwd.model.entry.embed_dim)
            for it in items:
                moments.add(fwd.backbone_features([it]).float())
            standardiser.set_statistics(name, *moments.result())
    finally:
        fwd.model.train(was_training)


class AlignmentLoss:
    """The loss-level term of one batch from the features `batch_loss` collected, over the domains present in it
    (a batch holding one domain adds nothing). MMD / CORAL: lambda x the mean over pairs of domains; DANN: the
    domain classifier's cross-entropy on gradient-reversed features (lambda scales the reversed gradient)."""

    def __init__(self, spec: TrialSpec, classifier: DomainClassifier | None) -> None:
        self.spec = spec.alignment
        self.domains = {name: i for i, name in enumerate(spec.batch_datasets())}
        self.seed = spec.seed
        self.classifier = classifier

    def weight(self, epochs_done: float) -> float:
        a = self.spec
        return scheduled_weight(a.loss_weight, a.schedule, epochs_done, a.schedule_epochs)

    def __call__(self, collected: AlignFeatures, epoch: int, step: int, steps: int) -> torch.Tensor | None:
        samples = self._samples(collected, np.random.default_rng([self.seed, epoch, step, ALIGN_STREAM]))
        if len(samples) < 2:
            return None
        weight = self.weight(epoch + step / max(steps, 1))
        loss = self.spec.loss
        if loss == "dann":
            assert self.classifier is not None
            order = sorted(samples)
            feats = torch.cat([samples[d] for d in order])
            labels = torch.cat([torch.full((len(samples[d]),), d, dtype=torch.long) for d in order])
            logits = self.classifier(grad_reverse(feats.float(), weight))
            return F.cross_entropy(logits, labels.to(logits.device))
        pairs = [(a, b) for a in sorted(samples) for b in sorted(samples) if a < b]
        terms = []
        for a, b in pairs:
            x, y = samples[a].float(), samples[b].float()
            if loss == "mmd":
                terms.append(gaussian_mmd(x, y, self.spec.mmd_bandwidth))
            elif len(x) >= 2 and len(y) >= 2:  # coral: covariances need two rows per domain
                terms.append(coral_loss(x, y))
        if not terms:
            return None
        return weight * torch.stack(terms).mean()

    def _samples(self, collected: AlignFeatures, rng: np.random.Generator) -> dict[int, torch.Tensor]:
        """Per domain index, its rows: one pooled vector per image, or its images' tokens (at most max_tokens)."""
        rows: dict[int, list[torch.Tensor]] = defaultdict(list)
        for group, feats in collected:
            for item, grid in zip(group, feats):
                if self.spec.sample == "pooled":
                    rows[self.domains[item.dataset]].append(grid.mean(dim=(1, 2))[None])
                else:
                    rows[self.domains[item.dataset]].append(grid.flatten(1).T)
        out = {}
        for d in sorted(rows):
            x = torch.cat(rows[d])
            if self.spec.sample == "tokens" and len(x) > self.spec.max_tokens:
                keep = np.sort(rng.choice(len(x), self.spec.max_tokens, replace=False))
                x = x[torch.from_numpy(keep).to(x.device)]
            out[d] = x
        return out
