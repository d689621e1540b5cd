"""The training side of the mixed-size rule: a batch of images of different sizes is never padded; its loss is the
mean of the per-image Dice losses, whatever the groups' sizes.

The expected loss is computed here by hand (softmax, one-hot, Dice per class and image with MONAI's smoothing
1e-5), image by image; a forward hook on the backbone module records what the network was actually given.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfm_ablate.config import TrialSpec
from vfm_ablate.models.registry import get_entry
from vfm_ablate.models.segmenter import build_segmenter
from vfm_ablate.trial.forward import Forward, batch_loss, dice_loss, validation_loss
from vfm_ablate.trial.items import Item
from vfm_ablate.validation import validate

SMOOTH = 1e-5  # MONAI DiceLoss smooth_nr = smooth_dr


def items_of_two_sizes() -> list[Item]:
    """Two 28 x 42 images and one 42 x 28 (patch-14 multiples), each with its own foreground share."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w, share) in enumerate([(28, 42, 0.1), (42, 28, 0.5), (28, 42, 0.3)]):
        image = torch.from_numpy(rng.normal(size=(3, h, w)).astype(np.float32))
        mask = torch.from_numpy((rng.random((h, w)) < share).astype(np.int64))
        out.append(Item(key=f"d/train/{i}", dataset="d", image=image, mask=mask, native_mask=None, source=str(i)))
    return out


def dice_by_hand(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One image's Dice loss (2 x h x w logits, h x w labels): 1 - Dice per class, averaged over both classes."""
    probs = torch.softmax(logits, dim=0)
    onehot = torch.stack([mask == 0, mask == 1]).float()
    inter = (probs * onehot).sum(dim=(1, 2))
    denom = probs.sum(dim=(1, 2)) + onehot.sum(dim=(1, 2))
    return (1 - (2 * inter + SMOOTH) / (denom + SMOOTH)).mean()


@pytest.mark.parametrize("regime", ["frozen", "lora"])
def test_a_mixed_size_batch_is_never_padded_and_its_loss_is_the_mean_per_image_dice(regime: str) -> None:
    spec = validate(
        TrialSpec, {"backbone": "tiny_vit_p14", "weights": "random", "regime": regime, "data": {"train": ["d"]}}
    )
    entry = get_entry(spec.backbone)
    torch.manual_seed(0)
    model = build_segmenter(spec, entry)
    model.eval()  # BatchNorm on running statistics: an image's logits do not depend on its batch mates
    fwd = Forward(model, torch.device("cpu"), spec, entry)
    items = items_of_two_sizes()

    seen: list[tuple[int, ...]] = []
    hook = model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        loss = batch_loss(fwd, dice_loss(), items)
    finally:
        hook.remove()
    # the backbone saw every image once, each at its own size (frozen: one at a time through the feature cache)
    assert sum(shape[0] for shape in seen) == len(items)
    assert {shape[2:] for shape in seen} == {(28, 42), (42, 28)}
    if regime == "lora":
        assert sorted(seen) == [(1, 3, 42, 28), (2, 3, 28, 42)]  # one call per same-size group

    with torch.no_grad():
        per_image = [dice_by_hand(model(it.image[None])[0], it.mask) for it in items]
    expected = torch.stack(per_image).mean()
    assert loss.item() == pytest.approx(float(expected), abs=1e-6)
    # the groups are 2 + 1 images: a mean of the two group means would weigh the single image twice
    assert loss.item() != pytest.approx(float((per_image[0] + per_image[2]) / 4 + per_image[1] / 2), abs=1e-4)
    assert loss.requires_grad  # it is the training loss: it back-propagates into the trained parameters

    # validation uses the same rule, whatever the chunking of its items
    assert validation_loss(fwd, dice_loss(), items, batch_size=2) == pytest.approx(float(expected), abs=1e-6)
