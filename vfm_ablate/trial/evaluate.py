"""Test a trained segmenter: IoU_fg pixel totals over every test pixel, per dataset (macro and pooled on top)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from .forward import Forward
from .items import Item
from .metrics import IoUAccumulator


@torch.no_grad()
def evaluate(
    fwd: Forward, items: list[Item], native: bool, progress: Callable[[int], None] | None = None
) -> tuple[IoUAccumulator, dict[str, list[np.ndarray]]]:
    """Prediction = argmax over the two logits; returns the totals and every prediction per dataset (overlays).

    With `native`, logits are resized bilinearly to the slice's own size and scored against its native mask.
    `progress(done)` after each image.
    """
    fwd.model.eval()
    acc = IoUAccumulator()
    preds: dict[str, list[np.ndarray]] = defaultdict(list)
    for done, it in enumerate(items, 1):
        logits = fwd.logits([it])
        if native and it.native_mask is not None:
            logits = torch.nn.functional.interpolate(
                logits, size=it.native_mask.shape, mode="bilinear", align_corners=False
            )
            target = torch.from_numpy(it.native_mask.astype(np.int64))
        else:
            target = it.mask
        pred = logits.argmax(dim=1)[0].cpu()
        acc.update(it.dataset, pred, target)
        preds[it.dataset].append(pred.numpy().astype(np.uint8))
        if progress is not None:
            progress(done)
    return acc, preds
