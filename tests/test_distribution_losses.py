import pytest
import torch

from fair4free.common.distribution_losses import (
    collapse_report,
    mmd_rbf,
    moment_matching,
    sliced_wasserstein,
)
from fair4free.common.nn_blocks import mlp


def _two_moons_like(n: int, generator: torch.Generator) -> torch.Tensor:
    """A bimodal 2-D target: a mean-only student would sit between the modes."""
    centres = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    index = torch.randint(0, 2, (n,), generator=generator)
    return centres[index] + 0.3 * torch.randn(n, 2, generator=generator)


def test_losses_are_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 4, generator=g), torch.randn(512, 4, generator=g)
    shifted = b + 2.0
    for loss in (mmd_rbf, sliced_wasserstein, moment_matching):
        same = loss(a, b).item()
        different = loss(a, shifted).item()
        assert different > 10 * max(same, 1e-3), loss.__name__


def test_sliced_wasserstein_needs_equal_shapes() -> None:
    with pytest.raises(ValueError, match="sliced Wasserstein needs equal shapes"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2))


def _train(loss_name: str, steps: int = 300) -> torch.Tensor:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = mlp(4, 64, 2, 2)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        target = _two_moons_like(256, g)
        fake = net(torch.randn(256, 4, generator=g))
        if loss_name == "pointwise":
            loss = (fake - target).pow(2).mean()
        else:
            loss = mmd_rbf(fake, target) + sliced_wasserstein(fake, target, generator=g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return net(torch.randn(2000, 4, generator=g))


def test_pointwise_loss_collapses_and_distribution_loss_does_not() -> None:
    target = _two_moons_like(2000, torch.Generator().manual_seed(9))
    collapsed = collapse_report(_train("pointwise"), target)
    matched = collapse_report(_train("distribution"), target)
    assert collapsed.spread_ratio < 0.3
    assert matched.spread_ratio > 0.8
    assert matched.min_axis_ratio > 0.6
    assert matched.nn_distance_ratio > 0.5


def test_collapse_report_of_identical_samples_is_one() -> None:
    sample = torch.randn(500, 3, generator=torch.Generator().manual_seed(2))
    report = collapse_report(sample, sample)
    assert report.spread_ratio == pytest.approx(1.0)
    assert report.min_axis_ratio == pytest.approx(1.0, rel=1e-4)
    assert report.nn_distance_ratio == pytest.approx(1.0)
