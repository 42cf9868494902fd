"""Tests of scoring synthetic table files against a real file, and of the report table."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import EvaluationReport, evaluate_synthetic
from fair4free.consumer.evaluation import evaluate_files, format_report_table


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    # The classifier's OpenMP threads spin-wait when other tests keep every core busy, which
    # made small fits 40 times slower; one thread is plenty for these tables.
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def make_table(n: int, seed: int, *, labels: tuple[Any, Any] = (0, 1)) -> pd.DataFrame:
    """Rows whose target is mostly a threshold on x; about 30 % of them are labels[1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=n)
    flip = rng.uniform(size=n) < 0.05
    positive = (x > 0.7) ^ flip
    return pd.DataFrame(
        {
            "x": x,
            "workclass": rng.choice(np.array(["Private", "State-gov", None], dtype=object), n),
            "sex": rng.choice(["Female", "Male"], size=n),
            "income": np.where(positive, labels[1], labels[0]),
        }
    )


def write_adult_style_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write the way the UCI files look: a space after each comma and '?' for missing."""
    text = frame.to_csv(index=False, na_rep="?")
    path.write_text("\n".join(", ".join(line.split(",")) for line in text.splitlines()) + "\n")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    synthetic, real = tmp_path / "synthetic.csv", tmp_path / "real.csv"
    write_adult_style_csv(make_table(300, seed=0), synthetic)
    write_adult_style_csv(make_table(300, seed=1), real)
    return synthetic, real


def evaluate(synthetic: Path, real: Path, **overrides: Any) -> EvaluationReport:
    kwargs: dict[str, Any] = {"target": "income", "sensitive": "sex"}
    kwargs.update(overrides)
    return evaluate_files(synthetic, real, **kwargs)


def test_adult_style_csv_files_are_scored(files: tuple[Path, Path]) -> None:
    synthetic, real = files
    report = evaluate(synthetic, real, positive_class=1)
    # The same tables in memory give the same scores: spaces and '?' were read as intended.
    in_memory = evaluate_synthetic(
        make_table(300, seed=0),
        make_table(300, seed=1),
        target="income",
        sensitive="sex",
        positive_class=1,
    )
    assert report == in_memory
    assert report.accuracy > 0.85
    assert report.coverage > 0.8
    assert (report.n_synthetic, report.n_real) == (300, 300)


def test_csv_and_parquet_give_the_same_report(files: tuple[Path, Path], tmp_path: Path) -> None:
    synthetic, real = files
    for path in files:
        pd.read_csv(path, skipinitialspace=True, na_values=["?"]).to_parquet(
            path.with_suffix(".parquet")
        )
    from_csv = evaluate(synthetic, real, positive_class=1)
    from_parquet = evaluate(
        synthetic.with_suffix(".parquet"), real.with_suffix(".parquet"), positive_class=1
    )
    assert from_parquet == from_csv


@pytest.mark.parametrize(
    ("labels", "expected", "other"),
    [
        ((0, 1), 1, 0),
        ((False, True), True, False),
        # Text classes: the rarer one in the real table (about 30 % of the rows here).
        (("<=50K", ">50K"), ">50K", "<=50K"),
        # The rarer class is found by count, not by order: here the rarer one sorts first.
        (("no", "a-yes"), "a-yes", "no"),
    ],
)
def test_the_positive_class_is_inferred_when_left_out(
    tmp_path: Path, labels: tuple[Any, Any], expected: Any, other: Any
) -> None:
    synthetic, real = tmp_path / "synthetic.csv", tmp_path / "real.csv"
    make_table(200, seed=0, labels=labels).to_csv(synthetic, index=False)
    make_table(200, seed=1, labels=labels).to_csv(real, index=False)
    inferred = evaluate(synthetic, real)
    assert inferred == evaluate(synthetic, real, positive_class=expected)
    assert inferred != evaluate(synthetic, real, positive_class=other)


def test_a_missing_file_is_named(tmp_path: Path, files: tuple[Path, Path]) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(Fair4FreeError, match="no such file: .*nowhere.csv") as caught:
        evaluate(missing, files[1])
    assert caught.value.code is ErrorCode.FILE_NOT_FOUND


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", b"", "cannot read .*empty.csv as a table"),
        ("quote.csv", b'x,sex,income\n"1,Male,0\n', "cannot read .*quote.csv as a table"),
        ("fake.parquet", b"x,sex,income\n1,Male,0\n", "cannot read .*fake.parquet as a table"),
    ],
)
def test_an_unreadable_file_is_named(
    tmp_path: Path, files: tuple[Path, Path], name: str, content: bytes, match: str
) -> None:
    broken = tmp_path / name
    broken.write_bytes(content)
    with pytest.raises(Fair4FreeError, match=match) as caught:
        evaluate(files[0], broken, positive_class=1)
    assert caught.value.code is ErrorCode.FILE_UNREADABLE


def test_a_directory_is_not_a_table(tmp_path: Path, files: tuple[Path, Path]) -> None:
    with pytest.raises(Fair4FreeError, match="is a directory") as caught:
        evaluate(tmp_path, files[1])
    assert caught.value.code is ErrorCode.FILE_UNREADABLE


def test_inference_needs_the_target_column(files: tuple[Path, Path]) -> None:
    with pytest.raises(Fair4FreeError, match="no target column 'salary'") as caught:
        evaluate(*files, target="salary")
    assert caught.value.code is ErrorCode.COLUMN_UNKNOWN


def test_inference_needs_two_classes(tmp_path: Path, files: tuple[Path, Path]) -> None:
    real = tmp_path / "three.csv"
    make_table(60, seed=1).assign(income=np.arange(60) % 3).to_csv(real, index=False)
    with pytest.raises(
        Fair4FreeError, match="the real target 'income' has 3 classes, not 2"
    ) as caught:
        evaluate(files[0], real)
    assert caught.value.code is ErrorCode.TARGET_NOT_BINARY


def report(**values: float) -> EvaluationReport:
    fields: dict[str, Any] = {
        "dpr": 0.5,
        "eor": 0.5,
        "ftu": 0.5,
        "accuracy": 0.5,
        "f1": 0.5,
        "recall": 0.5,
        "auroc": 0.5,
        "density": 0.5,
        "coverage": 0.5,
        "alpha_precision": 0.5,
        "beta_recall": 0.5,
        "authenticity": 0.5,
        "n_synthetic": 10,
        "n_real": 10,
    }
    fields.update(values)
    return EvaluationReport(**fields)


def test_undefined_scores_are_null_in_json() -> None:
    assert report(dpr=math.nan).to_dict()["dpr"] is None
    assert report(dpr=0.5).to_dict()["dpr"] == 0.5
    assert report(ftu=math.nan, beta_recall=math.nan).to_dict() == {
        **report().to_dict(),
        "ftu": None,
        "beta_recall": None,
    }


def test_the_report_table_shows_each_name_and_its_numbers() -> None:
    reports = {
        "real train": report(dpr=0.81234, eor=0.4, accuracy=0.85, f1=0.6667, recall=0.0714),
        "synthetic": report(
            auroc=0.91,
            density=1.23456,
            coverage=1.0,
            dpr=math.nan,
            ftu=0.0625,
            alpha_precision=0.98765,
            beta_recall=0.4321,
            authenticity=math.nan,
        ),
    }
    table = format_report_table(reports)
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "DPR",
        "EOR",
        "FTU",
        "Acc",
        "F1",
        "Recall",
        "AUROC",
        "Density",
        "Coverage",
        "a-Prec",
        "b-Rec",
        "Auth",
    ]
    assert lines[1].startswith("real train")
    assert lines[1].split()[2:] == [
        "0.812",
        "0.400",
        "0.500",
        "0.850",
        "0.667",
        "0.071",
        "0.500",
        "0.500",
        "0.500",
        "0.500",
        "0.500",
        "0.500",
    ]
    assert lines[2].startswith("synthetic ")
    assert lines[2].split()[1:] == [
        "n/a",
        "0.500",
        "0.062",
        "0.500",
        "0.500",
        "0.500",
        "0.910",
        "1.235",
        "1.000",
        "0.988",
        "0.432",
        "n/a",
    ]
    assert len({len(line) for line in lines}) == 1  # fixed width: the columns line up
