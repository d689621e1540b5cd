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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..alignment.losses import DomainClassifier, coral_loss, gaussian_mmd, grad_reverse, scheduled_weight
from ..alignment.standardise import ChannelMoments, FeatureStandardiser
from ..config import AlignmentSpec, TrialSpec
from ..models.head import HEAD_CHANNELS
from ..models.segmenter import Segmenter
from .forward import AlignFeatures, Forward
from .items import TrainingItems

ALIGN_STREAM = 3  # rng stream tag of the token subsampling (seeded per seed, epoch and batch)


class AlignmentModules(nn.Module):
    """What a trial adds to the segmenter for alignment: per-dataset feature statistics and DANN's classifier."""

    def __init__(self, standardiser: FeatureStandardiser | None, classifier: DomainClassifier | None) -> None:
        super().__init__()
        self.standardiser = standardiser
        self.classifier = classifier


# alignment.features -> the module that standardises each dataset's features (keys: config.ALIGNMENT_METHODS)
FEATURE_METHODS: dict[str, Callable[[list[str], int], FeatureStandardiser] | None] = {
    "none": None,
    "standardise": FeatureStandardiser,
}


def attach_alignment(model: Segmenter, spec: TrialSpec, statistics_datasets: list[str]) -> None:
    """Build the trial's alignment modules onto `model` (nothing when no feature-level method or classifier is on).

    Call it right after `build_segmenter` and before creating the optimiser: the classifier's initialisation draws
    from the seeded torch RNG and its parameters must be optimised."""
    a = spec.alignment
    dim = model.entry.embed_dim
    make_standardiser = FEATURE_METHODS[a.features]
    standardiser = make_standardiser(statistics_datasets, dim) if make_standardiser is not None else None
    classifier = None
    loss = LOSS_METHODS[a.loss]
    if loss is not None and loss.classifier:
        width = dim if a.layer == "head_input" else HEAD_CHANNELS[0]
        classifier = DomainClassifier(width, len(spec.batch_datasets()), a.dann_hidden)
    if standardiser is not None or classifier is not None:
        device = next(model.parameters()).device
        model.attach_alignment(AlignmentModules(standardiser, classifier).to(device))


@torch.no_grad()
def estimate_feature_statistics(fwd: Forward, images: TrainingItems) -> None:
    """Per-channel mean / std of each dataset's backbone tokens on its own training images, into the standardiser."""
    if not isinstance(images, TrainingItems):  # the type that guarantees no test image is in the statistics
        raise TypeError(f"feature statistics take TrainingItems, got {type(images).__name__}")
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


Samples = dict[int, torch.Tensor]  # domain index -> its rows (pooled vectors or tokens) in one batch


@dataclass(frozen=True)
class LossMethod:
    """A loss-level method: its batch term from the domains' samples at weight lambda; `classifier`: it trains
    DANN's domain classifier (attached to the segmenter)."""

    term: Callable[[Samples, AlignmentSpec, float, DomainClassifier | None], torch.Tensor | None]
    classifier: bool = False


def _pairwise(
    distance: Callable[[torch.Tensor, torch.Tensor, AlignmentSpec], torch.Tensor], min_rows: int
) -> Callable[[Samples, AlignmentSpec, float, DomainClassifier | None], torch.Tensor | None]:
    """lambda x the mean of `distance` over the pairs of domains that have `min_rows` rows each."""

    def term(samples: Samples, settings: AlignmentSpec, weight: float, _: DomainClassifier | None):
        order = sorted(samples)
        terms = [
            distance(samples[a].float(), samples[b].float(), settings)
            for a in order
            for b in order
            if a < b and len(samples[a]) >= min_rows and len(samples[b]) >= min_rows
        ]
        return weight * torch.stack(terms).mean() if terms else None

    return term


def _adversarial(
    samples: Samples, settings: AlignmentSpec, weight: float, classifier: DomainClassifier | None
) -> torch.Tensor:
    """DANN: the domain classifier's cross-entropy on gradient-reversed features (lambda scales the reversal)."""
    assert classifier is not None
    order = sorted(samples)
    feats = torch.cat([samples[d] for d in order])
    labels = torch.cat([torch.full((len(samples[d]),), d, dtype=torch.long) for d in order])
    logits = classifier(grad_reverse(feats.float(), weight))
    return F.cross_entropy(logits, labels.to(logits.device))


# alignment.loss -> its batch term (keys: config.ALIGNMENT_METHODS["loss"]; none adds no term)
LOSS_METHODS: dict[str, LossMethod | None] = {
    "none": None,
    "mmd": LossMethod(_pairwise(lambda x, y, s: gaussian_mmd(x, y, s.mmd_bandwidth), min_rows=1)),
    "coral": LossMethod(_pairwise(lambda x, y, s: coral_loss(x, y), min_rows=2)),  # covariances need two rows
    "dann": LossMethod(_adversarial, classifier=True),
}


class AlignmentLoss:
    """The loss-level term of one batch from the features `batch_loss` collected, over the domains present in it
    (a batch holding one domain adds nothing): the method's term from `LOSS_METHODS`."""

    def __init__(self, spec: TrialSpec, classifier: DomainClassifier | None) -> None:
        method = LOSS_METHODS[spec.alignment.loss]
        assert method is not None, "AlignmentLoss needs a loss-level method"
        self.method = method
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
        return self.method.term(samples, self.spec, weight, self.classifier)

    def _samples(self, collected: AlignFeatures, rng: np.random.Generator) -> Samples:
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
