"""The fairness penalty: sample distance correlation between the latent and the sensitive attribute.

Distance correlation (Szekely, Rizzo and Bakirov, 2007) is zero exactly when two random vectors are
independent, for any dependence, not just linear. Penalising it over each training batch pushes the
teacher's latent z towards independence from s, which is what lets the consumer decode rows with s
drawn separately. The sensitive attribute enters as a one-hot matrix, so multi-valued s works too.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-10


def _centred_distances(x: Tensor) -> Tensor:
    """Double-centred Euclidean distance matrix of the rows of x: [n, d] -> [n, n]."""
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)  # [n, n]
    # sqrt has an infinite gradient at 0 (the diagonal, duplicate rows): take it only where the
    # distance is positive, so the values stay exact and the gradient stays finite.
    positive = squared > _EPS
    distances = torch.where(positive, squared.clamp_min(_EPS).sqrt(), torch.zeros_like(squared))
    return (
        distances
        - distances.mean(dim=0, keepdim=True)
        - distances.mean(dim=1, keepdim=True)
        + distances.mean()
    )


def distance_covariance_sq(x: Tensor, y: Tensor) -> Tensor:
    """Squared sample distance covariance (the V-statistic) of paired rows x [n, p], y [n, q]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    return (_centred_distances(x) * _centred_distances(y)).mean()


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Sample distance correlation in [0, 1]; 0 for a constant column, as the definition gives."""
    a = _centred_distances(x)
    b = _centred_distances(y)
    dcov_xy = (a * b).mean().clamp_min(0.0)
    denominator = ((a * a).mean() * (b * b).mean()).sqrt()
    if float(denominator.detach()) <= _EPS:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return (dcov_xy / denominator).clamp(0.0, 1.0).sqrt()


def one_hot_sensitive(s: Tensor, n_categories: int) -> Tensor:
    """Sensitive indices [n] as a float one-hot matrix [n, k], the form the penalty expects."""
    return torch.nn.functional.one_hot(s, n_categories).to(torch.float32)
