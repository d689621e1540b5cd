"""DANN is adversarial inside a trial's loss: in one backward pass through the trial's alignment term, the domain
classifier gets the gradient that lowers its cross-entropy, and the features get exactly -lambda times the gradient
that cross-entropy has with respect to them (so the features move to confuse the classifier)."""

from __future__ import annotations

import copy

import pytest
import torch

from vfm_ablate.alignment.losses import DomainClassifier
from vfm_ablate.config import TrialSpec
from vfm_ablate.trial.alignment import AlignmentLoss
from vfm_ablate.trial.items import Item
from vfm_ablate.validation import validate

WIDTH = 6


def _item(dataset: str, i: int) -> Item:
    return Item(f"{dataset}/train/{i}", dataset, torch.zeros(3, 2, 2), None, None, f"{dataset}:{i}")


@pytest.mark.parametrize(("weight", "sample"), [(0.7, "pooled"), (2.5, "tokens")])
def test_the_features_get_minus_lambda_times_the_domain_classifiers_gradient(weight: float, sample: str) -> None:
    spec = validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "regime": "lora",
            "data": {"train": ["src"], "target": ["tgt"], "sampling": "balanced", "resize": {"policy": "native"}},
            "optim": {"batch_size": 4},
            "alignment": {"loss": "dann", "loss_weight": weight, "sample": sample, "dann_hidden": 8},
        },
    )
    g = torch.Generator().manual_seed(11)
    feats = torch.randn(4, WIDTH, 2, 3, generator=g) + torch.tensor([1.0, 1.0, -1.0, -1.0])[:, None, None, None]
    feats.requires_grad_(True)
    items = [_item("src", 0), _item("src", 1), _item("tgt", 0), _item("tgt", 1)]
    torch.manual_seed(12)
    classifier = DomainClassifier(WIDTH, 2, hidden=8)
    reference = copy.deepcopy(classifier)

    loss = AlignmentLoss(spec, classifier)([(items, feats)], epoch=0, step=0, steps=1)
    assert loss is not None
    loss.backward()

    # the same cross-entropy without any reversal, on the same rows (pooled: one per image; tokens: every token)
    rows = feats.mean(dim=(2, 3)) if sample == "pooled" else feats.flatten(2).transpose(1, 2).reshape(-1, WIDTH)
    per_image = 1 if sample == "pooled" else 6
    labels = torch.tensor([0, 0, 1, 1]).repeat_interleave(per_image)
    plain = torch.nn.functional.cross_entropy(reference(rows), labels)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)  # the forward pass is the plain classifier loss
    feature_grad, *classifier_grads = torch.autograd.grad(plain, [feats, *reference.parameters()])

    assert feats.grad is not None and feature_grad.abs().sum() > 0
    assert torch.allclose(feats.grad, -weight * feature_grad, rtol=1e-5, atol=1e-7)
    for mine, theirs in zip(classifier.parameters(), classifier_grads):
        assert torch.allclose(mine.grad, theirs, rtol=1e-5, atol=1e-7)  # the classifier itself is not reversed
