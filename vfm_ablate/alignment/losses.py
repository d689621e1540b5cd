"""Loss-level alignment between the features of two (or more) domains in a batch, added to the Dice loss.

- `gaussian_mmd`: squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012), the biased
  V-statistic (>= 0, exactly 0 for identical samples); used as a loss as in DDC / DAN (Tzeng et al. 2014,
  Long et al. 2015).
- `coral_loss`: CORAL, the squared Frobenius distance of the two feature covariances / (4 d^2) (Sun & Saenko 2016).
- `grad_reverse` + `DomainClassifier`: DANN (Ganin & Lempitsky 2015; Ganin et al. 2016): the classifier learns to
  tell the domains apart while the reversed, lambda-scaled gradient trains the features to confuse it.
- `scheduled_weight`: lambda constant, or DANN's ramp 2 / (1 + exp(-10 p)) - 1 from 0 to lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import DataError


def _two_sets(x: torch.Tensor, y: torch.Tensor, what: str, min_rows: int) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"{what}: expected two n x D matrices with one D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < min_rows or len(y) < min_rows:
        raise DataError(f"{what}: needs at least {min_rows} rows per domain, got {len(x)} and {len(y)}")


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y) with k(a, b) = exp(-|a - b|^2 / (2 sigma^2)).

    sigma: `bandwidth`, else the median heuristic (median pairwise distance of x and y together, not
    differentiated through)."""
    _two_sets(x, y, "gaussian_mmd", 1)
    xx, yy, xy = _squared_distances(x, x), _squared_distances(y, y), _squared_distances(x, y)
    if bandwidth is None:
        with torch.no_grad():
            z = torch.cat([x, y])
            d = _squared_distances(z, z)
            off = d[~torch.eye(len(z), dtype=torch.bool, device=d.device)]
            sigma2 = off.median().clamp_min(1e-12) if off.numel() else torch.ones((), device=d.device)
    else:
        sigma2 = torch.tensor(float(bandwidth) ** 2, device=x.device)

    def kernel(d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-d / (2.0 * sigma2))

    return kernel(xx).mean() + kernel(yy).mean() - 2.0 * kernel(xy).mean()


def covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(x) - 1)


def coral_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|C_x - C_y|_F^2 / (4 d^2) with unbiased covariances (needs >= 2 rows per domain)."""
    _two_sets(x, y, "coral_loss", 2)
    d = x.shape[1]
    diff = covariance(x) - covariance(y)
    return (diff * diff).sum() / (4.0 * d * d)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coefficient * grad, None


def grad_reverse(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -coefficient (DANN's gradient-reversal layer)."""
    return _GradientReversal.apply(x, float(coefficient))


class DomainClassifier(nn.Module):
    """DANN's domain discriminator on feature vectors: Linear -> ReLU -> Linear to one logit per domain."""

    def __init__(self, dim: int, num_domains: int, hidden: int = 256) -> None:
        super().__init__()
        if num_domains < 2:
            raise DataError(f"a domain classifier needs at least 2 domains, got {num_domains}")
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_domains))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _dann_ramp(weight: float, p: float) -> float:
    return weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


# alignment.schedule -> lambda at training progress p in [0, 1]
SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "constant": lambda weight, p: weight,
    "dann": _dann_ramp,
}


def scheduled_weight(weight: float, schedule: str, epochs_done: float, schedule_epochs: int) -> float:
    """lambda at a point of training (`epochs_done` counts fractions of epochs): constant, or DANN's ramp
    lambda * (2 / (1 + exp(-10 p)) - 1) with p = min(1, epochs_done / schedule_epochs)."""
    if schedule not in SCHEDULES:
        raise DataError(f"unknown alignment schedule '{schedule}' (known: {', '.join(SCHEDULES)})")
    p = min(1.0, max(0.0, epochs_done / schedule_epochs))
    return float(SCHEDULES[schedule](float(weight), p))
