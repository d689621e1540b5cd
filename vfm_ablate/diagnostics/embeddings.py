"""Image-level embeddings of a dataset's slices with a backbone: one vector per image, for domain diagnostics.

Images go through the same resize/normalisation as training. Slices of different network sizes are never
batched together: zero padding would add fake background to every mean-pooled embedding (SPEC pitfall 5).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from ..config import ResizeSpec
from ..data.sources import Slice
from ..data.transforms import image_to_tensor, target_size
from ..errors import ConfigError, DataError
from ..models.backbones import Backbone, Pooling


def dataset_embeddings(
    backbone: Backbone,
    slices: Sequence[Slice],
    resize: ResizeSpec,
    mean: Sequence[float],
    std: Sequence[float],
    pooling: Pooling = "mean",
    batch_size: int = 4,
) -> np.ndarray:
    """n x D float32 embeddings (row i = slices[i]) from `backbone.embed`, on the backbone's device, in eval mode.

    Slices are grouped by network input size and batched only within a group; tensors are built per batch so
    a 165-slice test set never sits in memory at full resolution. The backbone's train/eval mode is restored.
    """
    if not slices:
        raise DataError("dataset_embeddings: got no slices (is the dataset's test/unlabelled split empty?)")
    if batch_size < 1:
        raise ConfigError(f"dataset_embeddings: batch_size must be >= 1, got {batch_size}")
    patch = backbone.entry.patch_size
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(slices):
        if s.image.ndim != 2:
            raise DataError(f"{s.source}: expected a 2-D greyscale image, got shape {s.image.shape}")
        groups[target_size(s.image.shape[0], s.image.shape[1], resize, patch)].append(i)

    device = _device_of(backbone)
    rows: list[np.ndarray | None] = [None] * len(slices)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for size, idx in groups.items():
                for start in range(0, len(idx), batch_size):
                    chunk = idx[start : start + batch_size]
                    x = torch.stack(
                        [image_to_tensor(slices[i].image, size, mean, std, slices[i].value_range) for i in chunk]
                    ).to(device)
                    out = backbone.embed(x, pooling).float().cpu().numpy()
                    if out.shape != (len(chunk), backbone.entry.embed_dim):
                        raise ConfigError(
                            f"backbone '{backbone.entry.name}'.embed returned shape {out.shape}, expected "
                            f"({len(chunk)}, {backbone.entry.embed_dim})"
                        )
                    for i, row in zip(chunk, out):
                        rows[i] = row
    finally:
        backbone.train(was_training)
    return np.stack(rows).astype(np.float32, copy=False)


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
