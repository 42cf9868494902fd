"""Fidelity and diversity of synthetic rows: density and coverage (Naeem et al., 2020).

Plain functions over float matrices in a shared feature space; ``metrics.evaluate_synthetic``
builds that space from tables. Checked against a slow double-loop oracle in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.neighbors import NearestNeighbors

from fair4free.common.errors import ErrorCode, Fair4FreeError

DEFAULT_K = 5

# Squared distances come from |x|^2 - 2 x.y + |y|^2 (one matrix product, fast) whose rounding
# error grows with the squared norms involved. Two squared distances this close, relative to those
# norms, count as equal, so ties (frequent with one-hot columns) and duplicates are decided the way
# exact arithmetic decides them. Far above the rounding error, far below any real difference.
_TIE_RELATIVE_SLACK = 1e-9
_CHUNK_CELLS = 4_000_000


def density_coverage(
    real: NDArray[np.floating[Any]], synthetic: NDArray[np.floating[Any]], *, k: int = DEFAULT_K
) -> tuple[float, float]:
    """Measure fidelity (density) and diversity (coverage) as in Naeem et al. (2020).

    Each real row gets a ball out to its k-th nearest real neighbour. Density counts the balls
    each synthetic row falls in, over k: about 1 when both sides share a distribution, above 1
    where synthetic rows crowd together. Coverage is the share of balls holding a synthetic row.
    Both are robust to real outliers, unlike precision and recall. Balls are open, as in the
    paper's code, except that a real row's exact copy is always inside: a row with k duplicates
    (common in tables) has radius 0, and a copy should still cover it.
    """
    real_rows = _finite_matrix(real, name="real")
    synthetic_rows = _finite_matrix(synthetic, name="synthetic")
    if real_rows.shape[1] != synthetic_rows.shape[1]:
        widths = f"{real_rows.shape[1]} and {synthetic_rows.shape[1]}"
        detail = f"real and synthetic rows must have the same number of features, got {widths}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    if k < 1:
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, f"k must be at least 1, got {k}")
    if len(real_rows) < k + 1 or len(synthetic_rows) == 0:
        got = f"got {len(real_rows)} and {len(synthetic_rows)}"
        detail = f"k = {k} needs at least {k + 1} real rows and 1 synthetic row, {got}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)

    # Distances do not change under a shared shift; centring keeps the norms, and so the rounding
    # error of the squared-distance formula, as small as the spread of the data allows.
    centre = real_rows.mean(axis=0)
    real_rows, synthetic_rows = real_rows - centre, synthetic_rows - centre
    real_norms = np.einsum("ij,ij->i", real_rows, real_rows)
    synthetic_norms = np.einsum("ij,ij->i", synthetic_rows, synthetic_rows)

    # Querying the fitted rows themselves keeps each row as its own nearest neighbour (distance 0),
    # so column k holds the k-th neighbour among the others, duplicates counted.
    nearest = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(real_rows)
    distances, indices = nearest.kneighbors(real_rows)
    radii_squared = distances[:, k] ** 2
    radius_norms = real_norms[indices[:, k]]

    inside_counts = np.empty(len(real_rows), dtype=np.int64)
    chunk = max(1, _CHUNK_CELLS // len(synthetic_rows))
    for start in range(0, len(real_rows), chunk):
        rows = slice(start, start + chunk)
        norms = real_norms[rows, None]
        squared = norms - 2.0 * real_rows[rows] @ synthetic_rows.T + synthetic_norms[None, :]
        slack = _TIE_RELATIVE_SLACK * (2.0 * norms + radius_norms[rows, None] + synthetic_norms)
        inside = (squared < radii_squared[rows, None] - slack) | (squared <= slack)
        inside_counts[rows] = inside.sum(axis=1)

    density = float(inside_counts.sum()) / (k * len(synthetic_rows))
    coverage = float(np.mean(inside_counts > 0))
    return density, coverage


def _finite_matrix(values: NDArray[np.floating[Any]], *, name: str) -> NDArray[np.float64]:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        detail = f"{name} rows must be a 2-D array of finite numbers, got shape {matrix.shape}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    return matrix
