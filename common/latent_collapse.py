"""How to tell whether the student's latents have collapsed onto a few points of the teacher's.

A student can match the teacher's overall spread while piling its samples onto a handful of modes;
three ratios against the teacher's own latents catch both kinds of failure. The distillation logs
them and stores them with the student, and the benchmark reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances: [n, d], [m, d] -> [n, m]."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


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
