"""Privacy accounting for repeated Gaussian mechanisms: Renyi DP, converted to (epsilon, delta).

Pure arithmetic, no I/O, and no dependency on opacus (an optional extra): the owner daemon must be
able to state and enforce its latent release guarantee on any install. Tests compare it with
opacus's own accountant where opacus is present.

The Gaussian mechanism with noise standard deviation ``z`` times the L2 sensitivity is
``alpha / (2 z^2)``-RDP at every order ``alpha > 1`` (Mironov 2017), and RDP adds up under
composition. The conversion to (epsilon, delta) is Balle et al. 2020 ("Hypothesis testing
interpretations and Renyi differential privacy", Theorem 21), the same as opacus's
``get_privacy_spent``, minimised over a grid of orders; every order gives a valid bound, so a
grid only ever overstates epsilon, by a hair with the default grid.

The latent release (``data_owner/latent_release.py``) releases clip(mu_i, C) + N(0, (sigma C)^2 I)
for records chosen by a data-independent schedule that visits every record once per pass. Under
replace-one-record adjacency one release has L2 sensitivity 2C, so ``z = sigma / 2``, and after P
rows of a model trained on n records no record was released more than ``ceil(P / n)`` times.
The clip radius C cancels: epsilon depends only on sigma, delta and the passes.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

DEFAULT_ORDERS: Final[npt.NDArray[np.float64]] = 1.0 + np.geomspace(1e-3, 1e6, 2000)
"""RDP orders alpha: 1.001 to 10^6, 1% apart. The optimal order of k Gaussian releases is about
``1 + sqrt(ln(1/delta) / rho)`` with ``rho = k / (2 z^2)``, well inside this range for any
noise multiplier from 0.01 to 10^4 and any delta from 10^-30 to 0.1."""
DEFAULT_ORDERS.setflags(write=False)

SENSITIVITY_IN_CLIPS: Final = 2.0
"""L2 distance between two clipped vectors of norm at most C, in units of C: replacing one record
moves its clipped posterior mean by at most 2C."""

MAX_PASSES: Final = 10**12
"""Ceiling on the passes over the records a capacity search returns; a limit that allows more
is, for any real service, unlimited."""


def gaussian_rdp(
    orders: npt.ArrayLike, *, noise_multiplier: float, compositions: int
) -> npt.NDArray[np.float64]:
    """RDP at each order of ``compositions`` Gaussian mechanisms.

    :param noise_multiplier: the noise standard deviation divided by the L2 sensitivity (``z``).
    """
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier must be positive, got {noise_multiplier}")
    if compositions < 0:
        raise ValueError(f"compositions must be non-negative, got {compositions}")
    alphas = np.asarray(orders, dtype=np.float64)
    rdp: npt.NDArray[np.float64] = compositions * alphas / (2.0 * noise_multiplier**2)
    return rdp


def rdp_to_epsilon(
    orders: npt.ArrayLike, rdp: npt.ArrayLike, *, delta: float
) -> tuple[float, float]:
    """The smallest epsilon over the orders for which the RDP curve gives (epsilon, delta)-DP.

    Returns ``(epsilon, order)``; epsilon is never below 0.

    :raises ValueError: for orders not above 1, mismatched lengths or delta outside (0, 1).
    """
    alphas = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    values = np.atleast_1d(np.asarray(rdp, dtype=np.float64))
    if alphas.shape != values.shape or alphas.size == 0:
        raise ValueError(f"orders {alphas.shape} and rdp {values.shape} must match, non-empty")
    if not (alphas > 1).all():
        raise ValueError("RDP orders must all be above 1")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    epsilons = (
        values - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    )
    best = int(np.nanargmin(epsilons))
    return max(0.0, float(epsilons[best])), float(alphas[best])


def gaussian_epsilon(
    *,
    noise_multiplier: float,
    compositions: int,
    delta: float,
    orders: npt.ArrayLike = DEFAULT_ORDERS,
) -> float:
    """Epsilon of ``compositions`` Gaussian mechanisms at ``delta`` (0 for no composition)."""
    if compositions == 0:
        return 0.0
    rdp = gaussian_rdp(orders, noise_multiplier=noise_multiplier, compositions=compositions)
    return rdp_to_epsilon(orders, rdp, delta=delta)[0]


def passes(rows_released: int, records: int) -> int:
    """The most times the schedule has released any one record after ``rows_released`` rows."""
    if records < 1 or rows_released < 0:
        raise ValueError(f"need records >= 1 and rows >= 0, got {records} and {rows_released}")
    return -(-rows_released // records)


def latent_release_epsilon(
    *, records: int, rows_released: int, noise_multiplier: float, delta: float
) -> float:
    """Epsilon spent by the scheduled Gaussian latent release after ``rows_released`` rows.

    :param records: training rows of the model (the posterior bank's length, n).
    :param noise_multiplier: sigma: the noise standard deviation per coordinate over the clip C.
    """
    return gaussian_epsilon(
        noise_multiplier=noise_multiplier / SENSITIVITY_IN_CLIPS,
        compositions=passes(rows_released, records),
        delta=delta,
    )


def latent_release_passes(*, noise_multiplier: float, delta: float, epsilon_limit: float) -> int:
    """The most passes over the records whose epsilon stays within ``epsilon_limit`` (maybe 0).

    The release capacity is this times the number of records. Epsilon grows with every pass, so
    an exponential then a binary search finds the largest such count.
    """

    def within(k: int) -> bool:
        epsilon = gaussian_epsilon(
            noise_multiplier=noise_multiplier / SENSITIVITY_IN_CLIPS,
            compositions=k,
            delta=delta,
        )
        return epsilon <= epsilon_limit

    if not within(1):
        return 0
    low, high = 1, 2
    while within(high):
        if high >= MAX_PASSES:
            return MAX_PASSES
        low, high = high, min(2 * high, MAX_PASSES)
    while high - low > 1:  # within(low) holds, within(high) does not
        middle = (low + high) // 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low
