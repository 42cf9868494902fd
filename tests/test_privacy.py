"""Tests of the privacy scores against slow oracles, by behaviour, and through both CLIs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from test_cli import assert_one_line_error, run

from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.metrics import feature_space
from fair4free.common.privacy import (
    MISSING_GROUP,
    PrivacyConfig,
    PrivacyReport,
    evaluate_privacy,
)
from fair4free.common.privacy_attack import (
    attack_auc,
    density_ratio_scores,
    scott_bandwidth,
    tpr_at_fpr,
)
from fair4free.common.privacy_distances import (
    closer_share,
    distance_ratio,
    exact_copies,
    nearest_distances,
)
from fair4free.data_owner.datasets import make_cohort

TOLERANCE = 1e-9
COHORT_ROWS = 2000
SENSITIVE, TARGET = "sex", "readmitted"


def cohort(n: int, seed: int) -> pd.DataFrame:
    return make_cohort(n, seed=seed).frame


def pairwise(left: NDArray[np.float64], right: NDArray[np.float64]) -> NDArray[np.float64]:
    """Every distance, one pair at a time: slow and plainly right."""
    return np.array([[math.dist(a, b) for b in right] for a in left]).reshape(len(left), len(right))


@st.composite
def lattice_rows(draw: st.DrawFn) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Query and reference rows on a coarse grid, so copies and equal distances are common."""
    dim = draw(st.integers(1, 4))
    value = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0])
    row = st.lists(value, min_size=dim, max_size=dim)
    references = draw(st.lists(row, min_size=2, max_size=15))
    queries = draw(st.lists(st.one_of(st.sampled_from(references), row), min_size=1, max_size=15))
    offset = draw(st.sampled_from([0.0, 500.0]))
    return np.array(queries) + offset, np.array(references) + offset


@settings(max_examples=80, deadline=None)
@given(lattice_rows())
def test_nearest_distances_and_their_ratio_match_the_oracle(
    rows: tuple[NDArray[np.float64], NDArray[np.float64]],
) -> None:
    queries, references = rows
    every = np.sort(pairwise(queries, references), axis=1)
    nearest = nearest_distances(queries, references, k=2)
    np.testing.assert_allclose(nearest, every[:, :2], rtol=0.0, atol=TOLERANCE)
    assert (nearest[every[:, :2] == 0.0] == 0.0).all()  # a copy is at 0 exactly, not at rounding
    expected = [1.0 if b == 0.0 else a / b for a, b in every[:, :2]]
    np.testing.assert_allclose(distance_ratio(nearest), expected, rtol=1e-9, atol=TOLERANCE)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0]), st.sampled_from([0.0, 1.0, 2.5]))))
def test_closer_share_counts_ties_as_half(pairs: list[tuple[float, float]]) -> None:
    if not pairs:
        return
    first, second = (np.array(side) for side in zip(*pairs, strict=True))
    expected = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert closer_share(first, second) == pytest.approx(expected, abs=1e-12)


MIXED_ROWS = st.lists(
    st.tuples(st.sampled_from([1.0, 2.0, math.nan]), st.sampled_from(["a", "b", None])),
    min_size=1,
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(MIXED_ROWS, MIXED_ROWS)
def test_exact_copies_match_the_oracle(
    rows: list[tuple[float, str | None]], references: list[tuple[float, str | None]]
) -> None:
    def same(left: object, right: object) -> bool:
        return bool(pd.isna(left) and pd.isna(right)) or left == right

    expected = [
        any(all(same(a, b) for a, b in zip(row, ref, strict=True)) for ref in references)
        for row in rows
    ]
    frames = (pd.DataFrame(table, columns=["x", "label"]) for table in (rows, references))
    assert exact_copies(*frames).tolist() == expected


def oracle_attack_scores(
    synthetic: NDArray[np.float64],
    reference: NDArray[np.float64],
    candidates: NDArray[np.float64],
    dims: int,
) -> NDArray[np.float64]:
    """Principal axes by SVD, whitening, and each Gaussian kernel density summed term by term."""
    fitted = np.vstack([synthetic, reference])
    mean = fitted.mean(axis=0)
    _, singular, axes = np.linalg.svd(fitted - mean, full_matrices=False)
    spread = singular[:dims] / math.sqrt(len(fitted) - 1)

    def whiten(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray((rows - mean) @ axes[:dims].T / spread)

    def log_density(points: NDArray[np.float64], query: NDArray[np.float64]) -> float:
        width = scott_bandwidth(len(points), dims)
        terms = [-(math.dist(query, point) ** 2) / (2 * width**2) for point in points]
        top = max(terms)
        log_sum = top + math.log(sum(math.exp(term - top) for term in terms))
        return log_sum - math.log(len(points)) - dims / 2 * math.log(2 * math.pi * width**2)

    s, r = whiten(synthetic), whiten(reference)
    return np.array([log_density(s, q) - log_density(r, q) for q in whiten(candidates)])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_synthetic=st.integers(5, 30),
    n_reference=st.integers(5, 30),
    width=st.integers(3, 7),
    dims=st.integers(1, 3),
)
def test_density_ratio_scores_match_the_oracle(
    seed: int, n_synthetic: int, n_reference: int, width: int, dims: int
) -> None:
    rng = np.random.default_rng(seed)
    synthetic = rng.normal(size=(n_synthetic, width))
    reference = rng.normal(0.3, 1.5, size=(n_reference, width))
    candidates = rng.normal(size=(12, width))
    scores = density_ratio_scores(synthetic, reference, candidates, dims=dims)
    expected = oracle_attack_scores(synthetic, reference, candidates, dims)
    np.testing.assert_allclose(scores, expected, rtol=1e-7, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=40))
def test_auc_and_tpr_at_low_fpr_match_the_oracle(pairs: list[tuple[int, bool]]) -> None:
    scores = [float(score) for score, _ in pairs]
    members = [member for _, member in pairs]
    positives = [s for s, m in pairs if m]
    negatives = [s for s, m in pairs if not m]
    if not positives or not negatives:
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    assert attack_auc(scores, members) == pytest.approx(wins / (len(positives) * len(negatives)))
    for fpr in (0.0, 0.01, 0.3):
        best = 0.0  # flag every score at or above a threshold; keep the thresholds within fpr
        for threshold in [math.inf, *sorted(set(scores), reverse=True)]:
            false = sum(n >= threshold for n in negatives) / len(negatives)
            if false <= fpr:
                best = max(best, sum(p >= threshold for p in positives) / len(positives))
        assert tpr_at_fpr(scores, members, fpr=fpr) == pytest.approx(best)


def test_the_report_matches_a_brute_force_computation() -> None:
    train, holdout = cohort(120, seed=10), cohort(120, seed=11)
    synthetic = pd.concat([train.iloc[:40], cohort(100, seed=12)], ignore_index=True)
    report = evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE)

    space = feature_space(pd.concat([train, holdout]), columns=list(train.columns))
    s, t, h = (space.transform(frame) for frame in (synthetic, train, holdout))
    to_train, to_holdout = np.sort(pairwise(s, t), axis=1), pairwise(s, h).min(axis=1)
    holdout_to_train = np.sort(pairwise(h, t), axis=1)

    def ratio(two: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([1.0 if b == 0.0 else a / b for a, b in two[:, :2]])

    def key(row: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(None if pd.isna(value) else value for value in row)

    def copied(rows: pd.DataFrame) -> NDArray[np.bool_]:
        keys = {key(row) for row in train.itertuples(index=False)}
        return np.array([key(row) in keys for row in rows.itertuples(index=False)])

    def among(frame: pd.DataFrame, group: str | None) -> NDArray[np.bool_]:
        if group is None:
            return np.ones(len(frame), dtype=bool)
        return np.asarray(frame[SENSITIVE] == group, dtype=bool)

    for group, scores in [(None, report.overall), *report.groups.items()]:
        in_s, in_h = among(synthetic, group), among(holdout, group)
        dcr_t, dcr_h = np.median(to_train[in_s, 0]), np.median(to_holdout[in_s])
        baseline = np.median(holdout_to_train[in_h, 0])
        assert scores.dcr_train_median == pytest.approx(dcr_t, rel=1e-9)
        assert scores.dcr_holdout_median == pytest.approx(dcr_h, rel=1e-9)
        assert scores.holdout_dcr_train_median == pytest.approx(baseline, rel=1e-9)
        assert scores.dcr_ratio == pytest.approx(dcr_t / baseline, rel=1e-9)
        closer = np.mean(to_train[in_s, 0] < to_holdout[in_s])
        assert scores.closer_to_train_share == pytest.approx(closer)
        assert scores.nndr_synthetic_median == pytest.approx(np.median(ratio(to_train)[in_s]))
        assert scores.nndr_holdout_median == pytest.approx(np.median(ratio(holdout_to_train)[in_h]))
        assert scores.exact_copy_share == pytest.approx(np.mean(copied(synthetic)[in_s]))
        assert scores.holdout_copy_share == pytest.approx(np.mean(copied(holdout)[in_h]))
    assert report.overall.exact_copy_share == pytest.approx(40 / 140)
    assert set(report.groups) == {"F", "M"}


@pytest.fixture(scope="module")
def real_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    return cohort(COHORT_ROWS, seed=0), cohort(COHORT_ROWS, seed=1)


@pytest.fixture(scope="module")
def copies_report(real_tables: tuple[pd.DataFrame, pd.DataFrame]) -> PrivacyReport:
    train, holdout = real_tables
    return evaluate_privacy(train.copy(), train, holdout, sensitive=SENSITIVE, target=TARGET)


@pytest.fixture(scope="module")
def fresh_report(real_tables: tuple[pd.DataFrame, pd.DataFrame]) -> PrivacyReport:
    train, holdout = real_tables
    fresh = cohort(COHORT_ROWS, seed=2)
    return evaluate_privacy(fresh, train, holdout, sensitive=SENSITIVE, target=TARGET)


def test_copies_of_the_training_rows_are_caught(copies_report: PrivacyReport) -> None:
    assert set(copies_report.groups) == {"F", "M"}
    for scores in (copies_report.overall, *copies_report.groups.values()):
        assert scores.dcr_ratio < 0.1
        assert scores.closer_to_train_share > 0.95
        assert scores.nndr_synthetic_median < 0.1 < scores.nndr_holdout_median
        assert scores.exact_copy_share == 1.0
        assert scores.holdout_copy_share == 0.0
        assert scores.mia_auc > 0.75
        assert scores.mia_tpr_at_1pct_fpr > 0.05
        assert scores.undefined == {}


def test_a_fresh_sample_of_the_population_leaks_nothing(fresh_report: PrivacyReport) -> None:
    assert set(fresh_report.groups) == {"F", "M"}
    for scores in (fresh_report.overall, *fresh_report.groups.values()):
        assert 0.9 < scores.dcr_ratio < 1.1
        assert abs(scores.closer_to_train_share - 0.5) < 0.05
        assert abs(scores.nndr_synthetic_median - scores.nndr_holdout_median) < 0.05
        assert scores.exact_copy_share == 0.0
        assert abs(scores.mia_auc - 0.5) < 0.06
        assert scores.mia_tpr_at_1pct_fpr < 0.04
    overall = fresh_report.overall
    assert (overall.n_members, overall.n_non_members) == (COHORT_ROWS // 2, COHORT_ROWS // 2)
    assert overall.n_members == sum(group.n_members for group in fresh_report.groups.values())


def test_a_leak_confined_to_one_group_shows_in_that_group_only(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, holdout = real_tables
    fresh = cohort(COHORT_ROWS, seed=3)
    synthetic = pd.concat([train[train[SENSITIVE] == "F"], fresh[fresh[SENSITIVE] == "M"]])
    report = evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE)
    leaked, safe = report.groups["F"], report.groups["M"]
    assert leaked.dcr_ratio < 0.1 and leaked.exact_copy_share == 1.0 and leaked.mia_auc > 0.7
    assert 0.9 < safe.dcr_ratio < 1.1 and safe.exact_copy_share == 0.0
    assert abs(safe.mia_auc - 0.5) < 0.08


def test_more_training_than_hold_out_rows_still_compare_fairly(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    # Against all 2000 training rows a fresh sample would sit nearer to them than to 400
    # hold-out rows by the count alone; sampling the training rows down removes that.
    train, holdout = real_tables
    report = evaluate_privacy(cohort(1000, seed=7), train, holdout.iloc[:400], sensitive=SENSITIVE)
    assert report.rows_used["train_for_distances"] == report.rows_used["holdout"] == 400
    assert 0.9 < report.overall.dcr_ratio < 1.1
    assert abs(report.overall.closer_to_train_share - 0.5) < 0.06
    assert abs(report.overall.nndr_synthetic_median - report.overall.nndr_holdout_median) < 0.05


def test_copies_of_every_training_row_score_zero_however_small_the_hold_out(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    # The comparisons on equal-size samples only see the copies of the sampled training rows
    # (1 in 5 here); the DCR ratio measures both sides against every training row.
    train, holdout = real_tables
    report = evaluate_privacy(train.copy(), train, holdout.iloc[:400], sensitive=SENSITIVE)
    assert report.rows_used["train_for_dcr"] == len(train)
    assert report.overall.dcr_ratio == 0.0
    assert report.overall.exact_copy_share == 1.0
    assert report.overall.closer_to_train_share < 0.75  # diluted, as the module says


def test_the_same_seed_gives_the_same_report_and_sampling_is_reported(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, holdout = real_tables
    synthetic = cohort(1000, seed=4)
    config = PrivacyConfig(seed=7, max_rows=300)
    first = evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE, config=config)
    again = evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE, config=config)
    assert first == again
    other = PrivacyConfig(seed=8, max_rows=300)
    assert evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE, config=other) != first
    assert first.subsampled
    given = {"synthetic": 1000, "train": COHORT_ROWS, "holdout": COHORT_ROWS}
    assert dict(first.rows_given) == given
    assert first.rows_used["synthetic"] == first.rows_used["holdout"] == 300
    assert first.rows_used["train"] == COHORT_ROWS  # exact copies are sought among all of them
    assert first.overall.n_synthetic == 300


def test_small_groups_get_none_with_a_reason(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, holdout = (frame.iloc[:200].copy() for frame in real_tables)
    synthetic = cohort(200, seed=5)
    for frame in (train, holdout, synthetic):
        frame.loc[frame.index[:3], SENSITIVE] = "X"
        frame.loc[frame.index[3:5], SENSITIVE] = None
    report = evaluate_privacy(synthetic, train, holdout, sensitive=SENSITIVE)
    assert set(report.groups) == {"F", "M", "X", MISSING_GROUP}
    rare = report.groups["X"].to_dict()
    assert rare["dcr_ratio"] is None and rare["mia_auc"] is None
    assert rare["undefined"]["dcr_ratio"] == "3 synthetic rows; the least is 20"
    assert rare["undefined"]["nndr_holdout_median"] == "3 hold-out rows; the least is 20"
    assert report.overall.undefined == {}  # 100 non-members: just enough for TPR at 1% FPR
    text = json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text)["groups"][MISSING_GROUP]["n_synthetic"] == 2


def test_too_few_non_members_leave_tpr_undefined(
    real_tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, holdout = real_tables
    report = evaluate_privacy(cohort(300, seed=6), train, holdout.iloc[:150], sensitive=SENSITIVE)
    assert report.overall.n_non_members == 75
    assert math.isnan(report.overall.mia_tpr_at_1pct_fpr)
    why = "75 non-members cannot resolve a 1% false-positive rate; it takes 100"
    assert report.overall.undefined == {"mia_tpr_at_1pct_fpr": why}
    assert report.overall.to_dict()["mia_tpr_at_1pct_fpr"] is None


def _broken(name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    train, holdout, synthetic = cohort(100, seed=0), cohort(100, seed=1), cohort(100, seed=2)
    kwargs: dict[str, Any] = {"sensitive": SENSITIVE}
    if name == "no sensitive":
        synthetic = synthetic.drop(columns=SENSITIVE)
    elif name == "no target":
        kwargs["target"] = "readmited"
    elif name == "extra column":
        holdout = holdout.assign(ward="B")
    elif name == "missing column":
        synthetic = synthetic.drop(columns="bmi")
    elif name == "repeated column":
        train = pd.concat([train, train[["age"]]], axis=1)
    elif name == "text in a number":
        synthetic = synthetic.assign(bmi="heavy")
    elif name == "target is sensitive":
        kwargs["target"] = SENSITIVE
    elif name == "small holdout":
        holdout = holdout.iloc[:39]
    elif name == "small synthetic":
        synthetic = synthetic.iloc[:19]
    return synthetic, train, holdout, kwargs


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("no sensitive", ErrorCode.COLUMN_UNKNOWN,
         "the synthetic table has no sensitive column 'sex'"),
        ("no target", ErrorCode.COLUMN_UNKNOWN,
         "the synthetic table has no target column 'readmited'"),
        ("extra column", ErrorCode.SCHEMA_MISMATCH,
         "the holdout table has columns the train table lacks: 'ward'"),
        ("missing column", ErrorCode.SCHEMA_MISMATCH,
         "the synthetic table lacks the train columns 'bmi'"),
        ("repeated column", ErrorCode.SCHEMA_MISMATCH,
         "the train table repeats the column names 'age'"),
        ("text in a number", ErrorCode.SCHEMA_MISMATCH,
         "column 'bmi' of the synthetic table holds 'heavy', not a number as in the real table"),
        ("target is sensitive", ErrorCode.CONFIG_INVALID,
         "the target and the sensitive column must differ, both are 'sex'"),
        ("small holdout", ErrorCode.CONFIG_INVALID, "the holdout table has 39 rows; privacy needs "
         "40 (half for the attack's reference, half to attack)"),
        ("small synthetic", ErrorCode.CONFIG_INVALID,
         "the synthetic table has 19 rows; privacy needs 20"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_with_a_precise_error(
    name: str, code: ErrorCode, message: str
) -> None:
    synthetic, train, holdout, kwargs = _broken(name)
    with pytest.raises(Fair4FreeError, match=f"^{re.escape(message)}$") as caught:
        evaluate_privacy(synthetic, train, holdout, **kwargs)
    assert caught.value.code is code


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"max_rows": 0}, "max_rows must be a positive integer, got 0"),
        ({"projection_dims": True}, "projection_dims must be a positive integer, got True"),
        ({"max_rows": 30}, "max_rows (30) must be at least twice min_group_rows (20), "
         "to split the hold-out for the attack"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused(settings_: dict[str, Any], message: str) -> None:
    with pytest.raises(Fair4FreeError, match=f"^{re.escape(message)}$") as caught:
        PrivacyConfig(**settings_)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


@pytest.fixture(scope="module")
def table_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("privacy")
    train = cohort(600, seed=20)
    tables = {"train": train, "holdout": cohort(600, seed=21), "copies": train}
    paths = {name: folder / f"{name}.csv" for name in tables}
    for name, frame in tables.items():
        frame.to_csv(paths[name], index=False)
    return paths


@pytest.mark.parametrize("side", ["owner", "consumer"])
def test_the_command_prints_the_table_and_writes_json_once(
    side: str, table_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "privacy.json"
    args = ["privacy", "--synthetic", str(table_files["copies"]), "--train",
            str(table_files["train"]), "--holdout", str(table_files["holdout"]),
            "--sensitive", SENSITIVE, "--target", TARGET, "--json", str(out)]  # fmt: skip
    result = run(side, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["DCR-train", "DCR-hold", "hold-DCR"]
    assert [line.split()[0] for line in lines[1:4]] == ["all", "sex=F", "sex=M"]
    overall = lines[1].split()[2:]  # after "all rows"
    assert (overall[3], overall[7], overall[8]) == ("0.000", "1.000", "0.000")  # ratio, copies
    written = json.loads(out.read_text())
    assert written["overall"]["exact_copy_share"] == 1.0
    assert written["overall"]["dcr_ratio"] == 0.0
    assert set(written["groups"]) == {"F", "M"}
    assert written["rows_used"]["attack_members"] == 300

    before = out.read_text()
    again = run(side, *args)
    assert_one_line_error(again, ExitCode.BAD_INPUT, "exists; pass a new --json path")
    assert out.read_text() == before


def test_the_command_names_a_missing_column(table_files: dict[str, Path]) -> None:
    result = run("consumer", "privacy", "--synthetic", str(table_files["copies"]),
                 "--train", str(table_files["train"]), "--holdout", str(table_files["holdout"]),
                 "--sensitive", "race_typo")  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "no sensitive column 'race_typo'")
