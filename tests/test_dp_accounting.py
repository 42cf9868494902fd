"""The latent release's privacy accounting against independent oracles.

Opacus's RDP accountant (where the optional extra is installed) must agree to rounding on the same
orders; the exact privacy profile of the composed Gaussian mechanism (Gaussian DP, Dong, Roth and
Su 2022) is a floor no sound accountant may go below; the closed-form zCDP conversion (Bun and
Steinke 2016) is a ceiling the tighter conversion must stay under.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_ndtr, ndtr

from fair4free.common import dp_accounting as acc

sigmas = st.floats(min_value=0.3, max_value=300.0)
pass_counts = st.integers(min_value=1, max_value=10_000)
deltas = st.floats(min_value=1e-12, max_value=1e-3)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """The least epsilon of a mu-GDP mechanism at delta: the root of its privacy profile."""

    def profile(epsilon: float) -> float:
        return float(
            ndtr(-epsilon / mu + mu / 2) - math.exp(epsilon + log_ndtr(-epsilon / mu - mu / 2))
        )

    if profile(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while profile(high) > delta:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if profile(middle) > delta else (low, middle)
    return high


def zcdp_epsilon(rho: float, delta: float) -> float:
    """Bun and Steinke's conversion of rho-zCDP, looser than Balle et al.'s."""
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


@settings(max_examples=25, deadline=None)
@given(sigma=sigmas, k=pass_counts, delta=deltas)
def test_matches_opacus_on_the_same_orders(sigma: float, k: int, delta: float) -> None:
    rdp_module = pytest.importorskip("opacus.accountants.analysis.rdp")
    orders = [float(a) for a in acc.DEFAULT_ORDERS]
    # Sensitivity 2C with noise sigma C is noise multiplier sigma / 2 against sensitivity 1; one
    # release per record per pass, every record in every pass: sampling rate 1.
    rdp = rdp_module.compute_rdp(q=1.0, noise_multiplier=sigma / 2, steps=k, orders=orders)
    expected, order = rdp_module.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    ours = acc.latent_release_epsilon(
        records=1000, rows_released=1000 * (k - 1) + 1, noise_multiplier=sigma, delta=delta
    )
    assert ours == pytest.approx(expected, rel=1e-9)
    assert orders[0] < order < orders[-1]  # the grid's optimum is interior: widening it gains nil


@settings(max_examples=50, deadline=None)
@given(sigma=sigmas, k=pass_counts, delta=deltas)
def test_lies_between_the_exact_profile_and_the_zcdp_bound(
    sigma: float, k: int, delta: float
) -> None:
    ours = acc.gaussian_epsilon(noise_multiplier=sigma / 2, compositions=k, delta=delta)
    exact = exact_gaussian_epsilon(mu=2 * math.sqrt(k) / sigma, delta=delta)
    ceiling = zcdp_epsilon(rho=2 * k / sigma**2, delta=delta)
    assert exact * (1 - 1e-9) <= ours <= ceiling
    # RDP accounting of a plain Gaussian is close to exact: within 35% over this whole range,
    # except where both are tiny (at sigma 300 and delta 1e-3: 0.0071 against 0.0045).
    assert ours <= 1.35 * exact + 0.01


def test_a_known_value() -> None:
    # sigma 10: k = 1 is rho = 0.02-zCDP; Balle et al. at delta 1e-6 give 0.8998, under the zCDP
    # bound 1.071 and over the exact 0.834.
    epsilon = acc.latent_release_epsilon(
        records=26_000, rows_released=20_000, noise_multiplier=10.0, delta=1e-6
    )
    assert epsilon == pytest.approx(0.8998, abs=1e-3)
    assert epsilon < zcdp_epsilon(0.02, 1e-6)


@pytest.mark.parametrize(
    ("rows", "records", "expected"),
    [(0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (100_000, 26_000, 4)],
)
def test_passes_count_the_most_released_record(rows: int, records: int, expected: int) -> None:
    assert acc.passes(rows, records) == expected


def test_nothing_released_costs_nothing() -> None:
    assert (
        acc.latent_release_epsilon(records=5, rows_released=0, noise_multiplier=1.0, delta=1e-6)
        == 0.0
    )


def test_epsilon_grows_with_passes_and_not_within_one() -> None:
    def epsilon(rows: int) -> float:
        return acc.latent_release_epsilon(
            records=100, rows_released=rows, noise_multiplier=4.0, delta=1e-6
        )

    assert epsilon(1) == epsilon(100) < epsilon(101) == epsilon(200) < epsilon(201)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 8.0, 40.0])
@pytest.mark.parametrize("limit", [0.5, 1.0, 4.0, 16.0])
def test_passes_within_a_limit_are_the_largest_count(sigma: float, limit: float) -> None:
    k = acc.latent_release_passes(noise_multiplier=sigma, delta=1e-6, epsilon_limit=limit)

    def epsilon(passes: int) -> float:
        return acc.gaussian_epsilon(noise_multiplier=sigma / 2, compositions=passes, delta=1e-6)

    assert epsilon(k) <= limit < epsilon(k + 1)


def test_a_limit_below_one_pass_allows_none() -> None:
    one_pass = acc.gaussian_epsilon(noise_multiplier=1.0, compositions=1, delta=1e-6)
    assert (
        acc.latent_release_passes(noise_multiplier=2.0, delta=1e-6, epsilon_limit=one_pass * 0.99)
        == 0
    )


def test_an_enormous_limit_is_capped() -> None:
    assert (
        acc.latent_release_passes(noise_multiplier=1e4, delta=1e-6, epsilon_limit=1e9)
        == acc.MAX_PASSES
    )


@pytest.mark.parametrize(
    ("orders", "rdp", "delta", "message"),
    [
        ([2.0, 3.0], [1.0], 1e-6, "must match"),
        ([1.0, 3.0], [1.0, 2.0], 1e-6, "must all be above 1"),
        ([2.0], [1.0], 1.0, r"delta must lie in \(0, 1\)"),
    ],
)
def test_conversion_refuses_nonsense(
    orders: list[float], rdp: list[float], delta: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        acc.rdp_to_epsilon(orders, rdp, delta=delta)


def test_orders_grid_is_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        acc.DEFAULT_ORDERS[0] = 2.0
    assert np.all(np.diff(acc.DEFAULT_ORDERS) > 0)
