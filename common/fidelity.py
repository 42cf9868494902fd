"""Fidelity, diversity and authenticity of synthetic rows in a shared feature space.

Density and coverage (Naeem et al., 2020), and alpha-precision, beta-recall and authenticity
(Alaa, van Breugel, Saveliev and van der Schaar, "How Faithful is your Synthetic Data?", ICML
2022) in their common "naive" form on the feature space itself, as in the authors' code and in
synthcity. Plain functions over float matrices in a shared feature space;
``metrics.evaluate_synthetic`` builds that space from tables. Checked against slow oracles in the
tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.neighbors import NearestNeighbors

from fair4free.common.errors import ErrorCode, Fair4FreeError

DEFAULT_K = 5
"""The neighbourhood size Naeem et al. recommend for density and coverage."""

DEFAULT_GRID: tuple[float, ...] = tuple(float(level) for level in np.linspace(0.0, 1.0, 30))
"""The levels alpha (and beta) at which the curves are read: 30 evenly spaced, as Alaa et al."""

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
    real_rows, synthetic_rows = _matching_matrices(real, synthetic)
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


@dataclass(frozen=True, kw_only=True)
class FaithfulnessScores:
    """Alpha-precision, beta-recall and authenticity (Alaa et al., 2022), with their curves.

    Each curve holds, for every level of ``grid``, the share of rows that pass at that level; a
    faithful generator traces the diagonal, curve(a) = a. The scores are 1 - 2 * mean |a - curve(a)|
    over the grid: 1 on the diagonal, 0 for a flat curve at 0 or 1 on the default grid.
    """

    alpha_precision: float
    """Fidelity: do synthetic rows fall in the real alpha-supports in the right proportions?"""
    beta_recall: float
    """Diversity: are real rows reached by synthetic rows from the synthetic beta-supports?"""
    authenticity: float
    """Share of synthetic rows farther from their nearest real row than its own nearest is."""
    grid: tuple[float, ...]
    precision_curve: tuple[float, ...]
    recall_curve: tuple[float, ...]


def alpha_precision_beta_recall_authenticity(
    real: NDArray[np.floating[Any]],
    synthetic: NDArray[np.floating[Any]],
    *,
    grid: Sequence[float] = DEFAULT_GRID,
) -> FaithfulnessScores:
    """Score fidelity, diversity and authenticity as Alaa et al. (2022), in the naive form.

    The naive form takes the rows as they are (no learned one-class embedding) and hyperspheres as
    supports. The real alpha-support is the ball about the real mean holding the share alpha of
    the real rows (a quantile of their distances to it, linearly interpolated); the precision
    curve is the share of synthetic rows inside it. A real row is reached when its nearest
    synthetic row is no farther than its nearest other real row; the recall curve is the share of
    real rows reached by a synthetic row that lies in the synthetic beta-support: the ball about
    the synthetic mean, sized by the beta-quantile of the chosen synthetic rows' distances to that
    mean (as the authors' code and synthcity do). A synthetic row is authentic when its nearest
    real row has another real row closer than the synthetic one: a copy of a real row never is.

    Distances closer than 1e-9 of the largest row norm count as equal, so rounding decides
    nothing: a row on a radius is inside, and an equidistant synthetic row is not authentic. A
    real row with several equally near synthetic rows takes the first of them, as a
    nearest-neighbour search and so the authors' code do (ties are common with categorical
    columns; taking the one nearest to, or farthest from, the synthetic mean would bias the
    recall down or up). A synthetic row is authentic only against every real row equally near
    it. So the order of the real rows never matters, and that of the synthetic rows only through
    those ties.

    With as many synthetic as real rows, a fresh sample from the real distribution reaches about
    half the real rows (a real row's nearest row is as likely real as synthetic), so its
    beta-recall is near 0.5; near 1 takes copies or many more synthetic rows.
    """
    real_rows, synthetic_rows = _matching_matrices(real, synthetic)
    levels = _levels(grid)
    if len(real_rows) < 2 or len(synthetic_rows) == 0:
        got = f"got {len(real_rows)} and {len(synthetic_rows)}"
        detail = f"alpha-precision needs at least 2 real rows and 1 synthetic row, {got}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    largest_norm = max(_norms(real_rows).max(), _norms(synthetic_rows).max())
    tolerance = _TIE_RELATIVE_SLACK * float(largest_norm)
    real_centre, synthetic_centre = real_rows.mean(axis=0), synthetic_rows.mean(axis=0)

    real_radii = np.sort(_norms(real_rows - real_centre))
    synthetic_radii = np.sort(_norms(synthetic_rows - real_centre))
    alpha_radii = np.quantile(real_radii, levels)
    inside = np.searchsorted(synthetic_radii, alpha_radii + tolerance, side="right")
    precision_curve = inside / len(synthetic_rows)

    centre = real_centre  # any shared shift; it only keeps the rounding error small
    real_gaps = _nearest(
        real_rows, real_rows, centre=centre, tolerance=tolerance, skip_self=True
    ).distances
    positions = np.arange(len(synthetic_rows), dtype=np.float64)
    to_synthetic = _nearest(
        real_rows, synthetic_rows, centre=centre, tolerance=tolerance, values=positions, pick="min"
    )
    reached = to_synthetic.distances <= real_gaps + tolerance
    chosen = to_synthetic.values.astype(np.intp)  # each real row's nearest synthetic row
    chosen_radii = _norms(synthetic_rows[chosen] - synthetic_centre)
    beta_radii = np.quantile(chosen_radii, levels)
    reached_radii = np.sort(chosen_radii[reached])
    hits = np.searchsorted(reached_radii, beta_radii + tolerance, side="right")
    recall_curve = hits / len(real_rows)

    to_real = _nearest(
        synthetic_rows, real_rows, centre=centre, tolerance=tolerance, values=real_gaps, pick="max"
    )
    authentic = to_real.values < to_real.distances - tolerance
    return FaithfulnessScores(
        alpha_precision=_diagonal_score(levels, precision_curve),
        beta_recall=_diagonal_score(levels, recall_curve),
        authenticity=float(np.mean(authentic)),
        grid=tuple(float(level) for level in levels),
        precision_curve=tuple(float(share) for share in precision_curve),
        recall_curve=tuple(float(share) for share in recall_curve),
    )


@dataclass(frozen=True)
class _Nearest:
    distances: NDArray[np.float64]
    """Each query row's distance to its nearest reference row, computed directly."""
    values: NDArray[np.float64]
    """The reference values picked (least or greatest) over each query's nearest rows."""


def _nearest(
    queries: NDArray[np.float64],
    references: NDArray[np.float64],
    *,
    centre: NDArray[np.float64],
    tolerance: float,
    values: NDArray[np.float64] | None = None,
    pick: Literal["min", "max"] = "min",
    skip_self: bool = False,
) -> _Nearest:
    """Find each query row's nearest reference rows, optionally not counting a row itself.

    ``skip_self`` (queries and references the same rows, no ``values``) skips each row itself, so
    its duplicates still count as neighbours at distance 0. Identical rows are searched once, as
    categorical tables hold many. The matrix-product formula only proposes candidates, with a
    margin well above its rounding error; the distance to each candidate is then computed
    directly, and those within ``tolerance`` of the least are the nearest rows, over which
    ``values`` are picked.
    """
    fill = np.inf if pick == "min" else -np.inf
    reduce = np.minimum if pick == "min" else np.maximum
    unique_queries, query_of = _distinct(queries)
    unique_references, reference_of = _distinct(references)
    copies = np.bincount(reference_of)
    reference_values = np.zeros(len(unique_references))
    if values is not None:
        reference_values.fill(fill)
        reduce.at(reference_values, reference_of, values)
    shifted_queries, shifted_references = unique_queries - centre, unique_references - centre
    query_norms = np.einsum("ij,ij->i", shifted_queries, shifted_queries)
    reference_norms = np.einsum("ij,ij->i", shifted_references, shifted_references)
    slack = 2.0 * _TIE_RELATIVE_SLACK * (query_norms + reference_norms.max())
    distances = np.empty(len(unique_queries))
    picked = np.empty(len(unique_queries))
    chunk = max(1, _CHUNK_CELLS // len(unique_references))
    for start in range(0, len(unique_queries), chunk):
        rows = slice(start, start + chunk)
        squared = shifted_queries[rows] @ shifted_references.T
        squared *= -2.0
        squared += query_norms[rows, None]
        squared += reference_norms[None, :]
        own = np.arange(len(squared))
        if skip_self:  # the same unique rows on both sides; a row with copies keeps them
            alone = own[copies[own + start] == 1]
            squared[alone, alone + start] = np.inf
        first = squared.argmin(axis=1)
        least = np.maximum(squared[own, first], 0.0)
        bound = least + 4.0 * tolerance * (np.sqrt(least) + tolerance) + slack[rows]
        candidates = squared <= bound[:, None]
        # Most rows have a single candidate, their argmin: only the others need a search.
        counts = np.count_nonzero(candidates, axis=1)
        single = counts == 1
        query_index = np.repeat(own, counts)
        in_single = np.repeat(single, counts)
        reference_index = np.empty(len(query_index), dtype=np.intp)
        reference_index[in_single] = first[single]
        reference_index[~in_single] = np.nonzero(candidates[~single])[1]
        direct = _pair_distances(
            unique_queries, unique_references, query_index + start, reference_index
        )
        starts = np.cumsum(counts) - counts
        nearest = np.minimum.reduceat(direct, starts)
        tied = direct <= nearest[query_index] + tolerance
        candidate_values = np.where(tied, reference_values[reference_index], fill)
        distances[rows], picked[rows] = nearest, reduce.reduceat(candidate_values, starts)
    return _Nearest(distances=distances[query_of], values=picked[query_of])


def _distinct(rows: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """The distinct rows (by their bytes, in order of first appearance) and each row's among them.

    Hashing, not sorting: sorting rows is slow when most of them are equal.
    """
    codes: dict[bytes, int] = {}
    inverse = np.array([codes.setdefault(row.tobytes(), len(codes)) for row in rows], np.intp)
    first = np.empty(len(codes), dtype=np.intp)
    first[inverse[::-1]] = np.arange(len(rows))[::-1]  # the last write is the first appearance
    return rows[first], inverse


def _pair_distances(
    left: NDArray[np.float64],
    right: NDArray[np.float64],
    left_index: NDArray[np.intp],
    right_index: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Euclidean distances of the given row pairs, computed from their differences directly."""
    distances = np.empty(len(left_index))
    batch = max(1, _CHUNK_CELLS // max(1, left.shape[1]))
    for start in range(0, len(left_index), batch):
        pairs = slice(start, start + batch)
        distances[pairs] = _norms(left[left_index[pairs]] - right[right_index[pairs]])
    return distances


def _norms(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    squared: NDArray[np.float64] = np.einsum("ij,ij->i", rows, rows)
    return np.sqrt(squared)


def _diagonal_score(levels: NDArray[np.float64], curve: NDArray[np.float64]) -> float:
    return float(1.0 - 2.0 * np.mean(np.abs(levels - curve)))


def _levels(grid: Sequence[float]) -> NDArray[np.float64]:
    levels = np.asarray(grid, dtype=np.float64)
    if levels.ndim != 1 or len(levels) == 0:
        detail = f"the grid must be a non-empty list of levels, got shape {levels.shape}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    outside = levels[~((levels >= 0.0) & (levels <= 1.0))]
    if len(outside):
        detail = f"grid levels must lie between 0 and 1, got {float(outside[0])}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    return levels


def _matching_matrices(
    real: NDArray[np.floating[Any]], synthetic: NDArray[np.floating[Any]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    real_rows = _finite_matrix(real, name="real")
    synthetic_rows = _finite_matrix(synthetic, name="synthetic")
    if real_rows.shape[1] != synthetic_rows.shape[1]:
        widths = f"{real_rows.shape[1]} and {synthetic_rows.shape[1]}"
        detail = f"real and synthetic rows must have the same number of features, got {widths}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    return real_rows, synthetic_rows


def _finite_matrix(values: NDArray[np.floating[Any]], *, name: str) -> NDArray[np.float64]:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        detail = f"{name} rows must be a 2-D array of finite numbers, got shape {matrix.shape}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    return matrix
