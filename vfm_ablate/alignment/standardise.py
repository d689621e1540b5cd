"""Feature-level alignment: each dataset's backbone patch tokens standardised, per channel, with the mean and
standard deviation of that dataset's own images, before the head. The feature-grid analogue of AdaBN (Li et al.
2016): domain-specific first and second moments are removed, so the head sees every domain centred and scaled alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError

EPS = 1e-6  # added to the variance: a channel that never varies is mapped to 0, not divided by 0


class ChannelMoments:
    """Running per-channel sums over every token of a dataset's feature grids (float64), for mean and std."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def add(self, features: torch.Tensor) -> None:
        """Add a B x D x h x w grid (every one of its B*h*w tokens weighs the same)."""
        flat = features.detach().to("cpu", torch.float64).transpose(0, 1).reshape(features.shape[1], -1)
        self.sum += flat.sum(dim=1)
        self.sum_sq += (flat * flat).sum(dim=1)
        self.count += flat.shape[1]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per channel, float32; std = sqrt(population variance + EPS)."""
        if self.count == 0:
            raise DataError("feature standardisation: no tokens to estimate statistics from")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), torch.sqrt(var + EPS).float()


class FeatureStandardiser(nn.Module):
    """(features - mean[dataset]) / std[dataset] per channel; the statistics are buffers, so they travel with the
    trained state (checkpoints, best-validation state) and are restored with it."""

    def __init__(self, datasets: list[str], dim: int) -> None:
        super().__init__()
        self.datasets = list(datasets)
        self._index = {name: i for i, name in enumerate(self.datasets)}
        self.register_buffer("mean", torch.zeros(len(datasets), dim))
        self.register_buffer("std", torch.ones(len(datasets), dim))
        self.register_buffer("estimated", torch.zeros(len(datasets), dtype=torch.bool))

    def set_statistics(self, dataset: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        i = self._position(dataset)
        with torch.no_grad():
            self.mean[i] = mean.to(self.mean)
            self.std[i] = std.to(self.std)
            self.estimated[i] = True

    def forward(self, features: torch.Tensor, datasets: list[str]) -> torch.Tensor:
        """Standardise a B x D x h x w grid whose row b comes from `datasets[b]`."""
        idx = [self._position(d) for d in datasets]
        missing = [d for d, i in zip(datasets, idx) if not bool(self.estimated[i])]
        if missing:
            raise DataError(f"feature standardisation: statistics of {sorted(set(missing))} were never estimated")
        rows = torch.tensor(idx, device=self.mean.device)
        mean = self.mean[rows][:, :, None, None]
        std = self.std[rows][:, :, None, None]
        return (features - mean) / std

    def _position(self, dataset: str) -> int:
        if dataset not in self._index:
            raise DataError(f"feature standardisation: dataset '{dataset}' is not one of {self.datasets}")
        return self._index[dataset]
