"""Tests of the fairness, utility (with FTU), density and coverage scores and evaluate_synthetic."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.fidelity import alpha_precision_beta_recall_authenticity, density_coverage
from fair4free.common.metrics import (
    EvaluationReport,
    evaluate_synthetic,
    fairness_scores,
    feature_space,
    utility_scores,
)


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    # The classifier's OpenMP threads spin-wait when other tests keep every core busy, which
    # made small fits 40 times slower; one thread is plenty for these tables.
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


TOLERANCE = 1e-12


def oracle_density_coverage(
    real: NDArray[np.float64], synthetic: NDArray[np.float64], k: int
) -> tuple[float, float]:
    """Naeem et al.'s definitions written as plainly as possible, one pair of rows at a time."""
    radii = []
    for i, row in enumerate(real):
        others = sorted(math.dist(row, other) for j, other in enumerate(real) if j != i)
        radii.append(others[k - 1])
    inside_counts = []
    for row, radius in zip(real, radii, strict=True):
        count = 0
        for fake in synthetic:
            distance = math.dist(row, fake)
            if distance < radius or distance == 0.0:
                count += 1
        inside_counts.append(count)
    density = sum(inside_counts) / (k * len(synthetic))
    coverage = sum(count > 0 for count in inside_counts) / len(real)
    return density, coverage


@st.composite
def lattice_tables(draw: st.DrawFn) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    # Half-integers on a coarse grid: duplicates and tied distances galore, all exact in floats.
    k = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 4))
    n_real = draw(st.integers(k + 1, 10))
    n_synthetic = draw(st.integers(1, 10))
    offset = draw(st.sampled_from([0.0, 1000.0]))
    value = st.sampled_from([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
    real = [[draw(value) for _ in range(dim)] for _ in range(n_real)]
    synthetic = [[draw(value) for _ in range(dim)] for _ in range(n_synthetic)]
    return np.array(real) + offset, np.array(synthetic) + offset, k


@settings(max_examples=150, deadline=None)
@given(lattice_tables())
def test_density_coverage_matches_oracle_on_lattices(
    tables: tuple[NDArray[np.float64], NDArray[np.float64], int],
) -> None:
    real, synthetic, k = tables
    expected = oracle_density_coverage(real, synthetic, k)
    assert density_coverage(real, synthetic, k=k) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("seed", range(5))
def test_density_coverage_matches_oracle_on_continuous_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(int(rng.integers(8, 30)), int(rng.integers(1, 6))))
    synthetic = rng.normal(loc=0.3, size=(int(rng.integers(1, 30)), real.shape[1]))
    k = int(rng.integers(1, 6))
    expected = oracle_density_coverage(real, synthetic, k)
    assert density_coverage(real, synthetic, k=k) == pytest.approx(expected, abs=TOLERANCE)


def test_identical_rows_score_density_one_and_full_coverage() -> None:
    real = np.random.default_rng(0).normal(size=(400, 6))
    density, coverage = density_coverage(real, real.copy())
    # Open balls hold the row itself and its k - 1 nearest: k per ball, so exactly 1.
    assert density == pytest.approx(1.0, abs=TOLERANCE)
    assert coverage == 1.0


def test_exact_copy_covers_rows_with_many_duplicates() -> None:
    rows = np.random.default_rng(1).normal(size=(30, 3))
    real = np.repeat(rows, 7, axis=0)  # every row has 6 duplicates, so every radius is 0
    _, coverage = density_coverage(real, real.copy(), k=5)
    assert coverage == 1.0


def test_disjoint_distributions_score_zero() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 4))
    synthetic = rng.normal(loc=50.0, size=(300, 4))
    assert density_coverage(real, synthetic) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("real", "synthetic", "k", "code", "match"),
    [
        (
            np.zeros((10, 2)),
            np.zeros((4, 3)),
            5,
            ErrorCode.TENSOR_INVALID,
            "same number of features, got 2 and 3",
        ),
        (
            np.zeros(10),
            np.zeros((4, 1)),
            5,
            ErrorCode.TENSOR_INVALID,
            "real rows must be a 2-D array of finite numbers, got shape \\(10,\\)",
        ),
        (
            np.full((10, 2), np.nan),
            np.zeros((4, 2)),
            5,
            ErrorCode.TENSOR_INVALID,
            "real rows must be a 2-D array of finite",
        ),
        (np.zeros((10, 2)), np.zeros((4, 2)), 0, ErrorCode.CONFIG_INVALID, "k must be at least"),
        (
            np.zeros((5, 2)),
            np.zeros((4, 2)),
            5,
            ErrorCode.CONFIG_INVALID,
            "k = 5 needs at least 6 real rows and 1 synthetic row, got 5 and 4",
        ),
        (
            np.zeros((10, 2)),
            np.zeros((0, 2)),
            5,
            ErrorCode.CONFIG_INVALID,
            "k = 5 needs .*, got 10 and 0",
        ),
    ],
)
def test_density_coverage_rejects_bad_input(
    real: NDArray[np.float64],
    synthetic: NDArray[np.float64],
    k: int,
    code: ErrorCode,
    match: str,
) -> None:
    with pytest.raises(Fair4FreeError, match=match) as caught:
        density_coverage(real, synthetic, k=k)
    assert caught.value.code is code


def test_a_predictor_with_equal_rates_in_every_group_is_perfectly_fair() -> None:
    # Both groups: 2 positives, 2 negatives, one of each predicted positive.
    y_true = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    y_pred = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    groups = np.array(["a"] * 4 + ["b"] * 4)
    scores = fairness_scores(y_true, y_pred, sensitive_features=groups)
    assert scores.dpr == 1.0
    assert scores.eor == 1.0


def test_a_predictor_that_favours_one_group_only_is_maximally_unfair() -> None:
    y_true = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    y_pred = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # everyone in a positive, nobody in b
    groups = np.array(["a"] * 4 + ["b"] * 4)
    scores = fairness_scores(y_true, y_pred, sensitive_features=groups)
    assert scores.dpr == 0.0
    assert scores.eor == 0.0


def test_fairness_ratios_take_the_worst_pair_of_groups() -> None:
    y_true = np.array([1, 1, 0, 0] + [1, 1, 1, 0, 0] + [1, 1, 1, 1, 0, 0, 0, 0])
    y_pred = np.array([1, 1, 1, 0] + [1, 1, 0, 1, 0] + [1, 1, 1, 0, 1, 0, 0, 0])
    groups = np.array(["a"] * 4 + ["b"] * 5 + ["c"] * 8)
    # Selection rates 3/4, 3/5, 1/2; true positive rates 1, 2/3, 3/4; false positive rates
    # 1/2, 1/2, 1/4. Equalized odds is the worse of the two rate ratios.
    expected_dpr = (1 / 2) / (3 / 4)
    expected_eor = min((2 / 3) / 1, (1 / 4) / (1 / 2))
    scores = fairness_scores(y_true, y_pred, sensitive_features=groups)
    assert scores.dpr == pytest.approx(expected_dpr)
    assert scores.eor == pytest.approx(expected_eor)


def test_fairness_scores_reject_arrays_of_different_lengths() -> None:
    with pytest.raises(Fair4FreeError, match="differ in length") as caught:
        fairness_scores([1, 0], [1, 0, 1], sensitive_features=["a", "b"])
    assert caught.value.code is ErrorCode.TENSOR_INVALID


def make_table(n: int, seed: int, *, target_labels: tuple[Any, Any] = (0, 1)) -> pd.DataFrame:
    """Rows whose target is (almost) a threshold on x, with a sensitive group and a category."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=n)
    return pd.DataFrame(
        {
            "x": x,
            "age": rng.integers(18, 80, size=n),
            "sex": rng.choice(["Female", "Male"], size=n),
            "colour": rng.choice(np.array(["red", "green", "blue", None], dtype=object), size=n),
            "label": np.where(x > 0.5, target_labels[1], target_labels[0]),
        }
    )


def test_a_classifier_learns_a_separable_target() -> None:
    train = make_table(400, seed=0)
    test = make_table(400, seed=1)
    scores = utility_scores(train, test, target="label", positive_class=1, seed=0)
    assert scores.accuracy > 0.9
    assert scores.auroc > 0.9
    assert scores.f1 > 0.9
    assert scores.recall > 0.9
    assert np.array_equal(scores.y_true, (test["label"] == 1).to_numpy(dtype=np.int64))
    assert len(scores.y_pred) == len(test)


def test_utility_accepts_text_classes_and_a_positive_class_of_another_type() -> None:
    train = make_table(300, seed=2, target_labels=("no", "yes"))
    test = make_table(300, seed=3, target_labels=("no", "yes"))
    scores = utility_scores(train, test, target="label", positive_class="yes", seed=0)
    assert scores.accuracy > 0.9
    numeric = utility_scores(
        make_table(300, seed=2), make_table(300, seed=3), target="label", positive_class="1", seed=0
    )
    assert numeric.accuracy == scores.accuracy


def sensitive_table(n: int, seed: int, *, rule: str, groups: Sequence[Any]) -> pd.DataFrame:
    """Rows whose target follows ``rule``: the first group only, x only, or both at once."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=n)
    s = rng.choice(np.array(groups), size=n)  # numbers stay a numeric column
    first = s == groups[0]
    target = {"s": first, "x": x > 0.5, "s and x": first & (x > 0.5)}[rule]
    return pd.DataFrame(
        {"x": x, "noise": rng.normal(size=n), "s": s, "label": target.astype(np.int64)}
    )


def ftu(rule: str, groups: Sequence[Any] = ("Female", "Male")) -> tuple[float, pd.DataFrame]:
    train = sensitive_table(600, seed=0, rule=rule, groups=groups)
    test = sensitive_table(400, seed=1, rule=rule, groups=groups)
    scores = utility_scores(train, test, target="label", positive_class=1, seed=0, sensitive="s")
    return scores.ftu, test


@pytest.mark.parametrize(
    "groups", [("Female", "Male"), (1, 0), ("a", "b", "c")], ids=["text", "0/1", "three"]
)
def test_a_target_that_is_the_sensitive_value_gives_ftu_one(groups: Sequence[Any]) -> None:
    # The label says only whether s is the first group, so the classifier predicts from s alone:
    # changing s to another value changes every row's prediction, for three groups too (a row of
    # the second group changes when given the first group's value, though not the third's).
    share, _ = ftu("s", groups)
    assert share == 1.0


@pytest.mark.parametrize("groups", [("Female", "Male"), ("a", "b", "c")], ids=["two", "three"])
def test_a_target_that_ignores_the_sensitive_value_gives_ftu_near_zero(
    groups: Sequence[Any],
) -> None:
    share, _ = ftu("x", groups)
    assert share <= 0.02


def test_ftu_counts_the_rows_whose_prediction_depends_on_the_sensitive_value() -> None:
    # Positive exactly for the first group above x = 0.5: changing s moves the rows above 0.5 and
    # no others (up to the few near the threshold the trees place slightly off).
    share, test = ftu("s and x")
    assert share == pytest.approx(float(np.mean(test["x"] > 0.5)), abs=0.03)


def test_ftu_is_undefined_without_a_sensitive_column() -> None:
    train, test = make_table(200, seed=0), make_table(200, seed=1)
    scores = utility_scores(train, test, target="label", positive_class=1, seed=0)
    assert math.isnan(scores.ftu)


@pytest.mark.parametrize(
    ("sensitive", "code", "match"),
    [
        ("race", ErrorCode.COLUMN_UNKNOWN, "the test table has no sensitive column 'race'"),
        ("label", ErrorCode.CONFIG_INVALID, "must differ, both are 'label'"),
    ],
)
def test_ftu_needs_a_sensitive_feature_column(sensitive: str, code: ErrorCode, match: str) -> None:
    train, test = make_table(50, seed=0), make_table(50, seed=1)
    with pytest.raises(Fair4FreeError, match=match) as caught:
        utility_scores(train, test, target="label", positive_class=1, seed=0, sensitive=sensitive)
    assert caught.value.code is code


def test_evaluate_synthetic_reports_ftu_of_its_classifier() -> None:
    groups = ("Female", "Male")
    real = sensitive_table(300, seed=1, rule="s", groups=groups)
    report = _evaluate(sensitive_table(300, seed=0, rule="s", groups=groups), real, sensitive="s")
    assert report.ftu == 1.0
    report = _evaluate(sensitive_table(300, seed=0, rule="x", groups=groups), real, sensitive="s")
    assert report.ftu <= 0.02


def test_utility_needs_the_target_in_both_tables() -> None:
    train = make_table(50, seed=0).drop(columns="label")
    with pytest.raises(Fair4FreeError, match="the train table has no target column 'label'") as e:
        utility_scores(train, make_table(50, seed=1), target="label", positive_class=1, seed=0)
    assert e.value.code is ErrorCode.COLUMN_UNKNOWN


def test_feature_space_one_hots_labels_and_standardizes_numbers() -> None:
    reference = pd.DataFrame(
        {"n": [1.0, 2.0, 3.0, np.nan], "c": pd.Series(["a", "b", None, "a"], dtype=object)}
    )
    space = feature_space(reference, columns=["n", "c"])
    rows = space.transform(
        pd.DataFrame({"n": [2.0, np.nan], "c": pd.Series(["zzz", None], dtype=object)})
    )
    # Columns: one-hot a, b, missing; then n standardized (mean 2 after median imputation).
    assert rows.shape == (2, 4)
    assert rows[:, :3].tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert rows[:, 3].tolist() == [0.0, 0.0]


def test_feature_space_errors_name_the_columns() -> None:
    reference = pd.DataFrame({"n": [1.0, 2.0], "c": ["a", "b"]})
    with pytest.raises(Fair4FreeError, match="no columns 'nope'") as unknown:
        feature_space(reference, columns=["n", "nope"])
    assert unknown.value.code is ErrorCode.COLUMN_UNKNOWN
    with pytest.raises(Fair4FreeError, match="at least one column") as empty:
        feature_space(reference, columns=[])
    assert empty.value.code is ErrorCode.CONFIG_INVALID
    space = feature_space(reference, columns=["n", "c"])
    with pytest.raises(Fair4FreeError, match="lacks the columns 'c'") as lacking:
        space.transform(reference[["n"]], table="the synthetic table")
    assert lacking.value.code is ErrorCode.SCHEMA_MISMATCH


def test_evaluate_synthetic_scores_a_faithful_copy_well() -> None:
    real = make_table(400, seed=1)
    synthetic = make_table(600, seed=0)
    report = evaluate_synthetic(
        synthetic, real, target="label", sensitive="sex", positive_class=1, max_quality_rows=300
    )
    assert report.accuracy > 0.9
    assert 0.7 < report.dpr <= 1.0
    assert 0.7 < report.eor <= 1.0
    assert 0.7 < report.density < 1.5
    assert report.coverage > 0.8
    assert (report.n_synthetic, report.n_real) == (600, 400)
    assert 0.0 <= report.ftu <= 0.1  # the target ignores the sensitive column
    assert report.alpha_precision > 0.8
    assert 0.0 < report.beta_recall <= 1.0
    assert 0.0 < report.authenticity <= 1.0
    assert set(report.to_dict()) == {
        "dpr",
        "eor",
        "ftu",
        "accuracy",
        "f1",
        "recall",
        "auroc",
        "density",
        "coverage",
        "alpha_precision",
        "beta_recall",
        "authenticity",
        "n_synthetic",
        "n_real",
    }


def test_evaluate_synthetic_scores_fidelity_in_the_real_feature_space() -> None:
    real = make_table(200, seed=1)
    synthetic = make_table(150, seed=0)
    # Both tables fit within max_quality_rows, so no row is sampled away: the scores are those of
    # the whole tables in the space fitted on the real rows.
    report = _evaluate(synthetic, real, max_quality_rows=500)
    space = feature_space(real, columns=list(real.columns))
    real_rows, synthetic_rows = space.transform(real), space.transform(synthetic)
    assert (report.density, report.coverage) == density_coverage(real_rows, synthetic_rows)
    expected = alpha_precision_beta_recall_authenticity(real_rows, synthetic_rows)
    assert report.alpha_precision == expected.alpha_precision
    assert report.beta_recall == expected.beta_recall
    assert report.authenticity == expected.authenticity


def test_evaluate_synthetic_finds_a_copy_faithful_and_inauthentic() -> None:
    real = make_table(200, seed=1)
    report = _evaluate(real.copy(), real, max_quality_rows=500)
    # Every synthetic row is a real row: none is authentic, and both curves follow the diagonal
    # up to one row in 200 at each level.
    assert report.authenticity == 0.0
    assert report.alpha_precision == pytest.approx(1.0, abs=2 / 200)
    assert report.beta_recall == pytest.approx(1.0, abs=2 / 200)


def test_evaluate_synthetic_survives_a_csv_round_trip(tmp_path: Any) -> None:
    real = make_table(300, seed=1)
    synthetic = make_table(300, seed=0)
    synthetic["colour"] = None  # an all-missing category column reads back as floats
    synthetic["age"] = synthetic["age"].astype(float)  # a generator may write 42.0
    synthetic = synthetic[list(reversed(synthetic.columns))]  # column order does not matter
    expected = evaluate_synthetic(
        synthetic, real, target="label", sensitive="sex", positive_class=1
    )
    real.to_csv(tmp_path / "real.csv", index=False)
    synthetic.to_csv(tmp_path / "synthetic.csv", index=False)
    real_back = pd.read_csv(tmp_path / "real.csv")
    synthetic_back = pd.read_csv(tmp_path / "synthetic.csv")
    assert synthetic_back["colour"].dtype == np.float64
    report = evaluate_synthetic(
        synthetic_back, real_back, target="label", sensitive="sex", positive_class=1
    )
    assert report == expected


def test_evaluate_synthetic_is_repeatable_for_a_seed() -> None:
    real = make_table(300, seed=1)
    synthetic = make_table(300, seed=0)
    kwargs: dict[str, Any] = {
        "target": "label",
        "sensitive": "sex",
        "positive_class": 1,
        "seed": 7,
        "max_quality_rows": 100,
    }
    first = evaluate_synthetic(synthetic, real, **kwargs)
    assert evaluate_synthetic(synthetic, real, **kwargs) == first


def _evaluate(synthetic: pd.DataFrame, real: pd.DataFrame, **overrides: Any) -> EvaluationReport:
    kwargs: dict[str, Any] = {"target": "label", "sensitive": "sex", "positive_class": 1}
    kwargs.update(overrides)
    return evaluate_synthetic(synthetic, real, **kwargs)


REAL = make_table(60, seed=1)
SYNTHETIC = make_table(60, seed=0)


@pytest.mark.parametrize(
    ("synthetic", "real", "overrides", "code", "match"),
    [
        (
            SYNTHETIC.drop(columns=["colour", "age"]),
            REAL,
            {},
            ErrorCode.SCHEMA_MISMATCH,
            "the synthetic table lacks the real columns 'age', 'colour'",
        ),
        (
            SYNTHETIC.assign(extra=1),
            REAL,
            {},
            ErrorCode.SCHEMA_MISMATCH,
            "has columns the real table lacks: 'extra'",
        ),
        (
            SYNTHETIC,
            REAL,
            {"target": "income"},
            ErrorCode.COLUMN_UNKNOWN,
            "the real table has no target column 'income'",
        ),
        (
            SYNTHETIC,
            REAL,
            {"sensitive": "race"},
            ErrorCode.COLUMN_UNKNOWN,
            "the real table has no sensitive column 'race'",
        ),
        (
            SYNTHETIC,
            REAL,
            {"sensitive": "label"},
            ErrorCode.CONFIG_INVALID,
            "must differ, both are 'label'",
        ),
        (
            SYNTHETIC.assign(label=0),
            REAL,
            {},
            ErrorCode.TARGET_NOT_BINARY,
            "the synthetic target has only class '0'; a classifier cannot be trained",
        ),
        (
            SYNTHETIC,
            REAL,
            {"positive_class": "yes"},
            ErrorCode.CONFIG_INVALID,
            "the positive class 'yes' is none of '0', '1'",
        ),
        (
            SYNTHETIC.head(5),
            REAL,
            {},
            ErrorCode.CONFIG_INVALID,
            "the synthetic table has 5 rows; density and coverage need 6",
        ),
        (
            SYNTHETIC,
            REAL.head(3),
            {},
            ErrorCode.CONFIG_INVALID,
            "the real table has 3 rows",
        ),
        (
            SYNTHETIC,
            REAL,
            {"max_quality_rows": 5},
            ErrorCode.CONFIG_INVALID,
            "max_quality_rows must be at least k \\+ 1 = 6, got 5",
        ),
        (
            SYNTHETIC,
            REAL.assign(label=np.arange(60) % 3),
            {},
            ErrorCode.TARGET_NOT_BINARY,
            "the real target 'label' has 3 classes, not 2",
        ),
        (
            SYNTHETIC.assign(label=np.arange(60) % 3),
            REAL,
            {},
            ErrorCode.TARGET_NOT_BINARY,
            "the synthetic target holds '2', not a real class",
        ),
        (
            SYNTHETIC.assign(label=np.where(np.arange(60) == 3, np.nan, np.arange(60) % 2)),
            REAL,
            {},
            ErrorCode.COLUMN_UNSUPPORTED,
            "the synthetic target 'label' has 1 missing value\\(s\\)",
        ),
        (
            SYNTHETIC,
            REAL.assign(sex=["Male", None] * 30),
            {},
            ErrorCode.COLUMN_UNSUPPORTED,
            "the real sensitive column 'sex' has 30 missing value\\(s\\)",
        ),
        (
            SYNTHETIC,
            REAL.assign(sex="Female"),
            {},
            ErrorCode.SENSITIVE_CONSTANT,
            "the real sensitive column 'sex' has the single value 'Female'",
        ),
        (
            SYNTHETIC.assign(age=["old"] + [30] * 59),
            REAL,
            {},
            ErrorCode.SCHEMA_MISMATCH,
            "column 'age' of the synthetic table holds 'old', not a number as in the real table",
        ),
        (
            SYNTHETIC.assign(x=np.inf),
            REAL,
            {},
            ErrorCode.COLUMN_UNSUPPORTED,
            "column 'x' of the synthetic table holds an infinite value",
        ),
        (
            pd.concat([SYNTHETIC, SYNTHETIC[["x"]]], axis=1),
            REAL,
            {},
            ErrorCode.SCHEMA_MISMATCH,
            "the synthetic table repeats the column names 'x'",
        ),
    ],
)
def test_evaluate_synthetic_errors_name_what_is_wrong(
    synthetic: pd.DataFrame,
    real: pd.DataFrame,
    overrides: dict[str, Any],
    code: ErrorCode,
    match: str,
) -> None:
    with pytest.raises(Fair4FreeError, match=match) as caught:
        _evaluate(synthetic, real, **overrides)
    assert caught.value.code is code
