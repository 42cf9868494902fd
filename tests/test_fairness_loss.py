import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fair4free.common.fairness_loss import (
    distance_correlation,
    distance_covariance_sq,
    one_hot_sensitive,
)

TOLERANCE = 1e-5


def naive_dcov_sq(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook double-loop definition (Szekely et al. 2007, eq. 2.8), as a slow oracle."""
    n = x.shape[0]
    a = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
    b = np.array([[np.linalg.norm(y[i] - y[j]) for j in range(n)] for i in range(n)])
    total = 0.0
    for i, j in itertools.product(range(n), range(n)):
        a_ij = a[i, j] - a[i].mean() - a[:, j].mean() + a.mean()
        b_ij = b[i, j] - b[i].mean() - b[:, j].mean() + b.mean()
        total += a_ij * b_ij
    return total / n**2


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 12),
    p=st.integers(1, 4),
    q=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_vectorised_dcov_matches_the_double_loop(n: int, p: int, q: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = rng.normal(size=(n, q))
    fast = distance_covariance_sq(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert fast == pytest.approx(naive_dcov_sq(x, y), abs=TOLERANCE)


def test_independent_variables_score_near_zero_and_dependent_ones_clearly_above() -> None:
    generator = torch.Generator().manual_seed(0)
    s = torch.randint(0, 2, (1000,), generator=generator)
    s_onehot = one_hot_sensitive(s, 2)
    independent = torch.randn(1000, 8, generator=generator)
    dependent = independent + 1.5 * s_onehot[:, :1]
    assert distance_correlation(independent, s_onehot).item() < 0.1
    assert distance_correlation(dependent, s_onehot).item() > 0.4


def test_nonlinear_dependence_is_detected() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(800, 1, generator=generator)
    y = x.pow(2)  # uncorrelated with x, but fully dependent
    assert abs(np.corrcoef(x[:, 0], y[:, 0])[0, 1]) < 0.15
    assert distance_correlation(x, y).item() > 0.3


def test_constant_column_scores_zero_and_gradient_is_finite() -> None:
    z = torch.randn(64, 4, requires_grad=True)
    s = torch.zeros(64, 2)
    assert distance_correlation(z, s).item() == 0.0
    varying = one_hot_sensitive(torch.arange(64) % 2, 2)
    distance_correlation(z, varying).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="x has 3 rows but y has 4"):
        distance_covariance_sq(torch.zeros(3, 1), torch.zeros(4, 1))
