"""Distribution-level losses for the data-free student, and how to tell when it has collapsed.

The student maps noise to latents and never sees which teacher latent "belongs" to which noise
vector, so a pointwise loss would only teach it the mean. These losses compare two batches as
samples from two distributions: multi-bandwidth RBF maximum mean discrepancy, sliced Wasserstein
distance, and matching of the first two moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Bandwidths as multiples of the target batch's mean squared pairwise distance: small ones see
# local structure (modes), large ones see global placement.
DEFAULT_BANDWIDTH_SCALES: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances: [n, d], [m, d] -> [n, m]."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def mmd_rbf(
    x: Tensor, y: Tensor, *, scales: tuple[float, ...] = DEFAULT_BANDWIDTH_SCALES
) -> Tensor:
    """Biased squared MMD between samples x [n, d] and y [m, d] under a sum of RBF kernels.

    Bandwidths adapt to the scale of ``y`` (the target), detached so the student cannot shrink
    the kernel to cheat.
    """
    d_xx = _squared_distances(x, x)
    d_yy = _squared_distances(y, y)
    d_xy = _squared_distances(x, y)
    reference = d_yy.detach().mean().clamp_min(1e-6)
    loss: Tensor = x.new_zeros(())
    for scale in scales:
        gamma = 1.0 / (2.0 * scale * reference)
        loss = (
            loss
            + torch.exp(-gamma * d_xx).mean()
            + torch.exp(-gamma * d_yy).mean()
            - 2.0 * torch.exp(-gamma * d_xy).mean()
        )
    return loss


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, projections: int = 64, generator: torch.Generator | None = None
) -> Tensor:
    """Squared sliced 2-Wasserstein distance between equally sized batches x, y [n, d]."""
    if x.shape != y.shape:
        raise ValueError(f"sliced Wasserstein needs equal shapes, got {x.shape} and {y.shape}")
    directions = torch.randn(x.shape[1], projections, generator=generator, dtype=x.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)  # [d, p], unit columns
    x_sorted, _ = (x @ directions).sort(dim=0)  # [n, p]
    y_sorted, _ = (y @ directions).sort(dim=0)  # [n, p]
    distance: Tensor = (x_sorted - y_sorted).pow(2).mean()
    return distance


def moment_matching(x: Tensor, y: Tensor) -> Tensor:
    """Squared error between the means and the covariances of two batches."""
    mean_gap = (x.mean(0) - y.mean(0)).pow(2).sum()
    cov_gap = (torch.cov(x.T) - torch.cov(y.T)).pow(2).sum()
    return mean_gap + cov_gap


@dataclass(frozen=True, kw_only=True)
class CollapseReport:
    """How much of the teacher's latent spread the student reproduces (1.0 = all of it).

    ``spread_ratio`` compares total standard deviation; ``min_axis_ratio`` the worst principal
    axis of the teacher; ``nn_distance_ratio`` the mean nearest-neighbour distance, which drops
    when the student piles its samples onto a few points even at the right overall spread.
    """

    spread_ratio: float
    min_axis_ratio: float
    nn_distance_ratio: float


def collapse_report(student: Tensor, teacher: Tensor) -> CollapseReport:
    """Measure mode collapse of student latents [n, d] against teacher latents [m, d]."""
    with torch.no_grad():
        spread = (torch.cov(student.T).trace() / torch.cov(teacher.T).trace()).sqrt()
        _, _, axes = torch.linalg.svd(teacher - teacher.mean(0), full_matrices=False)  # [d, d]
        teacher_std = (teacher @ axes.T).std(0)
        student_std = (student @ axes.T).std(0)
        min_axis = (student_std / teacher_std.clamp_min(1e-8)).min()
        nn_student = _nearest_neighbour_distance(student)
        nn_teacher = _nearest_neighbour_distance(teacher[: student.shape[0]])
    return CollapseReport(
        spread_ratio=float(spread),
        min_axis_ratio=float(min_axis),
        nn_distance_ratio=float(nn_student / nn_teacher.clamp_min(1e-8)),
    )


def _nearest_neighbour_distance(x: Tensor) -> Tensor:
    """Mean distance from each row of x to its nearest other row."""
    distances = _squared_distances(x, x)
    distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1).values.sqrt().mean()
