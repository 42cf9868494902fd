"""The student's latent model and the collapse check that watches it."""

from __future__ import annotations

import pytest
import torch

from fair4free.common.latent_collapse import collapse_report
from fair4free.consumer.student_models import LatentKernelDensity, StudentConfig


def _bimodal(n: int, seed: int) -> torch.Tensor:
    """Two tight clusters far apart in 2-D: a smoothing model would fill the gap between them."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    index = (torch.rand(n, generator=g) < 0.3).long()  # 30 % in the second cluster
    return centres[index] + 0.05 * torch.randn(n, 2, generator=g)


def _density(pool: torch.Tensor, bandwidth: float = 0.1) -> LatentKernelDensity:
    config = StudentConfig(
        latent_dim=2, output_dim=3, n_sensitive=2, pool_rows=pool.shape[0], bandwidth=bandwidth
    )
    return LatentKernelDensity.from_pool(config, pool)


def test_kernel_density_keeps_clusters_and_their_shares() -> None:
    pool = _bimodal(2000, seed=0)
    samples = _density(pool).sample(20_000, torch.Generator().manual_seed(1))
    in_second = (samples[:, 0] > 0).float().mean().item()
    assert in_second == pytest.approx((pool[:, 0] > 0).float().mean().item(), abs=0.02)
    between = ((samples[:, 0] > -1.0) & (samples[:, 0] < 1.0)).float().mean().item()
    assert between < 0.001  # nothing lands in the empty middle
    report = collapse_report(samples[:2000], _bimodal(2000, seed=2))
    assert report.spread_ratio == pytest.approx(1.0, abs=0.05)
    assert report.min_axis_ratio > 0.9


def test_kernel_width_is_the_bandwidth_times_the_pool_spread() -> None:
    pool = _bimodal(1000, seed=3)
    model = _density(pool, bandwidth=0.2)
    assert torch.allclose(model.widths, 0.2 * pool.std(dim=0))
    samples = model.sample(500, torch.Generator().manual_seed(4))
    copies = (samples.unsqueeze(1) == pool.unsqueeze(0)).all(dim=-1)  # [500, 1000]
    assert not copies.any()  # fresh noise: no sample is a released latent itself


def test_kernel_density_round_trips_through_its_state() -> None:
    pool = _bimodal(300, seed=5)
    model = _density(pool)
    rebuilt = LatentKernelDensity(model.config)
    rebuilt.load_state_dict(model.state_dict())
    first = model.sample(50, torch.Generator().manual_seed(6))
    second = rebuilt.sample(50, torch.Generator().manual_seed(6))
    assert torch.equal(first, second)


def test_a_pool_of_the_wrong_shape_is_refused() -> None:
    config = StudentConfig(latent_dim=2, output_dim=3, n_sensitive=2, pool_rows=10)
    with pytest.raises(ValueError, match=r"pool of shape \(9, 2\) does not fit"):
        LatentKernelDensity.from_pool(config, torch.zeros(9, 2))


@pytest.mark.parametrize("bandwidth", [0.0, -0.1, 1.5])
def test_bandwidth_outside_zero_to_one_is_refused(bandwidth: float) -> None:
    with pytest.raises(ValueError, match="invalid student shape"):
        StudentConfig(latent_dim=2, output_dim=3, n_sensitive=2, pool_rows=10, bandwidth=bandwidth)


def test_collapse_report_sees_a_point_mass_and_a_dropped_mode() -> None:
    teacher = _bimodal(2000, seed=7)
    point_mass = teacher.mean(dim=0, keepdim=True).repeat(2000, 1)
    assert collapse_report(point_mass, teacher).spread_ratio < 0.01
    one_mode = teacher[teacher[:, 0] < 0]
    dropped = collapse_report(one_mode, teacher)
    assert dropped.min_axis_ratio < 0.2  # the axis joining the clusters is gone


def test_collapse_report_of_identical_samples_is_one() -> None:
    sample = torch.randn(500, 3, generator=torch.Generator().manual_seed(2))
    report = collapse_report(sample, sample)
    assert report.spread_ratio == pytest.approx(1.0)
    assert report.min_axis_ratio == pytest.approx(1.0, rel=1e-4)
    assert report.nn_distance_ratio == pytest.approx(1.0)
