"""Per-row distances and exact copies on which the privacy scores are built.

``fidelity`` already finds nearest neighbours, but privacy needs something else from them: the two
nearest distances of every row (for the distance ratio), each exact, so that a copied record is
at distance 0 and not at the rounding error of a matrix product. Ties between neighbours, which
``fidelity`` settles with care, do not matter here: only distances enter the scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.neighbors import NearestNeighbors

from fair4free.common.errors import ErrorCode, Fair4FreeError

_TIE_RELATIVE_SLACK = 1e-9
"""Two distances this close, relative to the larger, are equal: they differ by rounding alone."""


def nearest_distances(
    queries: NDArray[np.floating[Any]], references: NDArray[np.floating[Any]], *, k: int
) -> NDArray[np.float64]:
    """Each query row's distances to its ``k`` nearest reference rows, ascending; shape (n, k).

    A brute-force search proposes the neighbours and their distances are then recomputed from the
    row differences, so an exact copy sits at distance 0. A rounding slip in the search can only
    swap neighbours whose distances agree to rounding, which leaves the distances as they are.
    """
    query_rows = np.asarray(queries, dtype=np.float64)
    reference_rows = np.asarray(references, dtype=np.float64)
    if query_rows.ndim != 2 or reference_rows.ndim != 2:
        shapes = f"{query_rows.shape} and {reference_rows.shape}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, f"rows must be 2-D arrays, got {shapes}")
    if query_rows.shape[1] != reference_rows.shape[1]:
        widths = f"{query_rows.shape[1]} and {reference_rows.shape[1]}"
        detail = f"query and reference rows must have the same number of features, got {widths}"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    if not 1 <= k <= len(reference_rows):
        detail = f"k = {k} nearest rows need 1 <= k <= {len(reference_rows)} reference rows"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    # Centring keeps the norms, and so the search's rounding error, as small as the data allows.
    centre = reference_rows.mean(axis=0)
    query_rows, reference_rows = query_rows - centre, reference_rows - centre
    search = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference_rows)
    neighbours = np.asarray(search.kneighbors(query_rows, return_distance=False), dtype=np.intp)
    differences = query_rows[:, None, :] - reference_rows[neighbours]  # (n, k, features)
    distances = np.sqrt(np.einsum("nkf,nkf->nk", differences, differences))
    return np.sort(distances, axis=1)


def distance_ratio(nearest_two: NDArray[np.float64]) -> NDArray[np.float64]:
    """Nearest over second-nearest distance (NNDR) of each row, from ``nearest_distances(k=2)``.

    Near 0, a row sits on one record and away from all others, which is how a copy of an outlier
    looks; near 1, it is as close to several records, so it singles none out. A row on two or more
    identical records (0/0) singles none out either, so it gets 1.
    """
    nearest, second = nearest_two[:, 0], nearest_two[:, 1]
    ratio = np.ones(len(nearest_two))
    np.divide(nearest, second, out=ratio, where=second > 0.0)
    return ratio


def closer_share(to_first: NDArray[np.float64], to_second: NDArray[np.float64]) -> float:
    """Share of rows nearer to the first set than to the second; an equal distance counts half.

    Counting ties as half keeps 0.5 the value of a generator that does not favour either set,
    even on tables of categories where many rows lie at the same distance from both.
    """
    tolerance = _TIE_RELATIVE_SLACK * np.maximum(to_first, to_second)
    tied = np.abs(to_first - to_second) <= tolerance
    closer = (to_first < to_second) & ~tied
    return float(np.mean(closer + 0.5 * tied))


def exact_copies(rows: pd.DataFrame, references: pd.DataFrame) -> NDArray[np.bool_]:
    """Whether each row equals some reference row in every column, a missing value matching one.

    Both frames must hold conformed values (floats for numbers, text for labels) in the same
    column order, so that 1, 1.0 and "1" read from different files are one value.
    """
    if list(rows.columns) != list(references.columns):
        detail = "rows and reference rows must have the same columns in the same order"
        raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
    seen = set(_row_keys(references))
    return np.array([key in seen for key in _row_keys(rows)], dtype=np.bool_)


def _row_keys(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    # NaN never equals itself, so every kind of missing value becomes None before comparing.
    plain = frame.astype(object).where(frame.notna(), None)
    return list(plain.itertuples(index=False, name=None))
