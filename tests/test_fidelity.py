"""Tests of alpha-precision, beta-recall and authenticity against a slow oracle and by behaviour."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fair4free.common import fidelity
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.fidelity import (
    DEFAULT_GRID,
    FaithfulnessScores,
    alpha_precision_beta_recall_authenticity,
)

TOLERANCE = 1e-12
TIE_SLACK = 1e-9  # distances this close, relative to the largest row norm, are equal (documented)


def quantile(values: Sequence[float], level: float) -> float:
    """The linearly interpolated quantile, as numpy's default and Alaa et al.'s code take it."""
    ordered = sorted(values)
    position = level * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def diagonal_score(levels: Sequence[float], curve: Sequence[float]) -> float:
    return 1.0 - 2.0 * sum(
        abs(level - share) for level, share in zip(levels, curve, strict=True)
    ) / len(levels)


def oracle(
    real: NDArray[np.float64], synthetic: NDArray[np.float64], levels: Sequence[float]
) -> tuple[float, float, float, list[float], list[float]]:
    """The definitions written as plainly as possible, one row or one pair of rows at a time."""
    real_rows = [list(map(float, row)) for row in real]
    fake_rows = [list(map(float, row)) for row in synthetic]
    tie = TIE_SLACK * max(math.hypot(*row) for row in real_rows + fake_rows)
    real_centre = [sum(column) / len(real_rows) for column in zip(*real_rows, strict=True)]
    fake_centre = [sum(column) / len(fake_rows) for column in zip(*fake_rows, strict=True)]

    real_radii = [math.dist(row, real_centre) for row in real_rows]
    precision_curve = []
    for level in levels:
        radius = quantile(real_radii, level)
        inside = [math.dist(fake, real_centre) <= radius + tie for fake in fake_rows]
        precision_curve.append(sum(inside) / len(fake_rows))

    gaps = []  # each real row's distance to its nearest other real row
    for i, row in enumerate(real_rows):
        gaps.append(min(math.dist(row, other) for j, other in enumerate(real_rows) if j != i))
    reached, chosen_radii = [], []
    for row, gap in zip(real_rows, gaps, strict=True):
        distances = [math.dist(row, fake) for fake in fake_rows]
        nearest = min(distances)
        tied = [j for j, distance in enumerate(distances) if distance <= nearest + tie]
        # Among equally near synthetic rows, the first.
        chosen_radii.append(math.dist(fake_rows[tied[0]], fake_centre))
        reached.append(nearest <= gap + tie)
    recall_curve = []
    for level in levels:
        radius = quantile(chosen_radii, level)
        hits = [
            ok and chosen <= radius + tie for ok, chosen in zip(reached, chosen_radii, strict=True)
        ]
        recall_curve.append(sum(hits) / len(real_rows))

    authentic = []
    for fake in fake_rows:
        distances = [math.dist(fake, row) for row in real_rows]
        nearest = min(distances)
        tied = [i for i, distance in enumerate(distances) if distance <= nearest + tie]
        # Authentic only if every equally near real row has another real row closer still.
        authentic.append(all(gaps[i] < nearest - tie for i in tied))
    return (
        diagonal_score(levels, precision_curve),
        diagonal_score(levels, recall_curve),
        sum(authentic) / len(fake_rows),
        precision_curve,
        recall_curve,
    )


def assert_matches_oracle(
    real: NDArray[np.float64], synthetic: NDArray[np.float64], levels: Sequence[float]
) -> None:
    scores = alpha_precision_beta_recall_authenticity(real, synthetic, grid=levels)
    precision, recall, authenticity, precision_curve, recall_curve = oracle(real, synthetic, levels)
    assert scores.precision_curve == pytest.approx(precision_curve, abs=TOLERANCE)
    assert scores.recall_curve == pytest.approx(recall_curve, abs=TOLERANCE)
    assert scores.alpha_precision == pytest.approx(precision, abs=TOLERANCE)
    assert scores.beta_recall == pytest.approx(recall, abs=TOLERANCE)
    assert scores.authenticity == pytest.approx(authenticity, abs=TOLERANCE)
    assert scores.grid == pytest.approx(list(levels), abs=0.0)


grids = st.one_of(
    st.just(list(DEFAULT_GRID)),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
)


@st.composite
def lattice_tables(
    draw: st.DrawFn,
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[float]]:
    # Half-integers on a coarse grid: duplicates, copies and tied distances galore, all exact.
    dim = draw(st.integers(1, 4))
    n_real = draw(st.integers(2, 10))
    n_synthetic = draw(st.integers(1, 10))
    offset = draw(st.sampled_from([0.0, 1000.0]))
    value = st.sampled_from([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
    real = [[draw(value) for _ in range(dim)] for _ in range(n_real)]
    copy_or_new = st.one_of(st.sampled_from(real), st.lists(value, min_size=dim, max_size=dim))
    synthetic = [list(draw(copy_or_new)) for _ in range(n_synthetic)]
    return np.array(real) + offset, np.array(synthetic) + offset, draw(grids)


@settings(max_examples=120, deadline=None)
@given(lattice_tables())
def test_scores_match_the_oracle_on_lattices(
    tables: tuple[NDArray[np.float64], NDArray[np.float64], list[float]],
) -> None:
    assert_matches_oracle(*tables)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_real=st.integers(2, 25),
    n_synthetic=st.integers(1, 25),
    dim=st.integers(1, 6),
    shift=st.floats(-2.0, 2.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    copies=st.integers(0, 5),
)
def test_scores_match_the_oracle_on_continuous_rows(
    seed: int, n_real: int, n_synthetic: int, dim: int, shift: float, scale: float, copies: int
) -> None:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, dim)) * scale
    synthetic = (rng.normal(size=(n_synthetic, dim)) + shift) * scale
    # Some exact copies of real rows, and real duplicates: the ties that continuous data has.
    synthetic[: min(copies, n_synthetic)] = real[
        rng.integers(0, n_real, size=min(copies, n_synthetic))
    ]
    real[-1] = real[0]
    assert_matches_oracle(real, synthetic, DEFAULT_GRID)


@st.composite
def one_hot_tables(
    draw: st.DrawFn,
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[float]]:
    # Categorical rows, one-hot and standardized as the feature space does: distances that are
    # equal in exact arithmetic come out of different sums, so only the tie slack decides them.
    levels = draw(st.lists(st.integers(2, 4), min_size=1, max_size=3))
    n_real = draw(st.integers(2, 12))
    n_synthetic = draw(st.integers(1, 12))
    codes = [
        [draw(st.integers(0, count - 1)) for count in levels] for _ in range(n_real + n_synthetic)
    ]
    blocks = [np.eye(count)[[row[b] for row in codes]] for b, count in enumerate(levels)]
    rows = np.hstack(blocks)
    real = rows[:n_real]
    scale = real.std(axis=0)
    rows = (rows - real.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return rows[:n_real], rows[n_real:], list(DEFAULT_GRID)


@settings(max_examples=120, deadline=None)
@given(one_hot_tables())
def test_scores_match_the_oracle_on_standardized_one_hot_rows(
    tables: tuple[NDArray[np.float64], NDArray[np.float64], list[float]],
) -> None:
    assert_matches_oracle(*tables)


@pytest.mark.parametrize("cells", [1, 7, 40])
def test_scores_match_the_oracle_when_computed_in_small_chunks(
    monkeypatch: pytest.MonkeyPatch, cells: int
) -> None:
    # Chunks of a row or a few rows (and pair batches of a few pairs), with duplicates and copies.
    monkeypatch.setattr(fidelity, "_CHUNK_CELLS", cells)
    rng = np.random.default_rng(cells)
    real = rng.integers(-2, 3, size=(23, 3)).astype(np.float64) / 2
    synthetic = np.vstack([real[:5], rng.integers(-2, 3, size=(14, 3)) / 2])
    assert_matches_oracle(real, synthetic, DEFAULT_GRID)


def test_copies_of_the_real_rows_are_faithful_but_never_authentic() -> None:
    real = np.random.default_rng(0).normal(size=(500, 5))
    scores = alpha_precision_beta_recall_authenticity(real, real[::-1].copy())
    # Each curve then counts the real rows within a quantile of their own distances: at most one
    # row above the level a, so the curves sit within 1/500 of the diagonal.
    assert scores.alpha_precision == pytest.approx(1.0, abs=2 / 500)
    assert scores.beta_recall == pytest.approx(1.0, abs=2 / 500)
    assert scores.authenticity == 0.0


def test_a_fresh_sample_of_the_real_distribution_is_precise() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(1000, 4))
    scores = alpha_precision_beta_recall_authenticity(real, rng.normal(size=(1000, 4)))
    assert scores.alpha_precision > 0.95
    # As many synthetic as real rows: a real row's nearest row is synthetic about half the time,
    # so about half of each beta-support's real rows are reached (the naive form's ceiling).
    assert 0.4 < scores.beta_recall < 0.6
    # For the same reason, about half the synthetic rows are farther out than real neighbours.
    assert 0.35 < scores.authenticity < 0.65


def test_many_more_synthetic_rows_reach_nearly_every_real_row() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 3))
    scores = alpha_precision_beta_recall_authenticity(real, rng.normal(size=(4000, 3)))
    # 20 synthetic rows per real one: the nearest row is synthetic for about 20/21 of the rows.
    assert scores.alpha_precision > 0.95
    assert scores.beta_recall > 0.85


def test_a_shifted_distribution_loses_precision() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(1000, 4))
    fresh = alpha_precision_beta_recall_authenticity(real, rng.normal(size=(1000, 4)))
    shifted = alpha_precision_beta_recall_authenticity(real, rng.normal(loc=1.5, size=(1000, 4)))
    far = alpha_precision_beta_recall_authenticity(real, rng.normal(loc=50.0, size=(1000, 4)))
    assert shifted.alpha_precision < fresh.alpha_precision - 0.3
    # Nothing inside any real ball: the precision curve is flat at 0, which scores 0.
    assert far.precision_curve == (0.0,) * len(DEFAULT_GRID)
    assert far.alpha_precision == pytest.approx(0.0, abs=TOLERANCE)
    assert far.beta_recall == pytest.approx(0.0, abs=TOLERANCE)
    assert far.authenticity == 1.0


def test_only_ties_let_the_order_of_the_synthetic_rows_matter() -> None:
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 2, size=(60, 5)).astype(np.float64)  # one-hot like: many ties
    real, synthetic = rows[:30], rows[30:]
    first = alpha_precision_beta_recall_authenticity(real, synthetic)
    assert isinstance(first, FaithfulnessScores)
    assert alpha_precision_beta_recall_authenticity(real[rng.permutation(30)], synthetic) == first
    continuous = rng.normal(size=(60, 5))  # no ties
    real, synthetic = continuous[:30], continuous[30:]
    first = alpha_precision_beta_recall_authenticity(real, synthetic)
    again = alpha_precision_beta_recall_authenticity(real[::-1], synthetic[rng.permutation(30)])
    assert again == first


@pytest.mark.parametrize(
    ("real", "synthetic", "grid", "code", "match"),
    [
        (
            np.zeros((10, 2)),
            np.zeros((4, 3)),
            DEFAULT_GRID,
            ErrorCode.TENSOR_INVALID,
            "same number of features, got 2 and 3",
        ),
        (
            np.zeros((10, 2)),
            np.array([[0.0, np.inf]]),
            DEFAULT_GRID,
            ErrorCode.TENSOR_INVALID,
            "synthetic rows must be a 2-D array of finite numbers",
        ),
        (
            np.zeros((1, 2)),
            np.zeros((4, 2)),
            DEFAULT_GRID,
            ErrorCode.CONFIG_INVALID,
            "needs at least 2 real rows and 1 synthetic row, got 1 and 4",
        ),
        (
            np.zeros((3, 2)),
            np.zeros((0, 2)),
            DEFAULT_GRID,
            ErrorCode.CONFIG_INVALID,
            "needs at least 2 real rows and 1 synthetic row, got 3 and 0",
        ),
        (
            np.zeros((3, 2)),
            np.zeros((3, 2)),
            [],
            ErrorCode.CONFIG_INVALID,
            "the grid must be a non-empty list of levels, got shape \\(0,\\)",
        ),
        (
            np.zeros((3, 2)),
            np.zeros((3, 2)),
            [0.5, 1.5],
            ErrorCode.CONFIG_INVALID,
            "grid levels must lie between 0 and 1, got 1.5",
        ),
        (
            np.zeros((3, 2)),
            np.zeros((3, 2)),
            [0.5, math.nan],
            ErrorCode.CONFIG_INVALID,
            "grid levels must lie between 0 and 1, got nan",
        ),
    ],
)
def test_bad_input_is_rejected(
    real: NDArray[np.float64],
    synthetic: NDArray[np.float64],
    grid: Sequence[float],
    code: ErrorCode,
    match: str,
) -> None:
    with pytest.raises(Fair4FreeError, match=match) as caught:
        alpha_precision_beta_recall_authenticity(real, synthetic, grid=grid)
    assert caught.value.code is code
