"""Dataset loaders on the real benchmark files, splitting, export and the synthetic cohort."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.table_io import read_table
from fair4free.data_owner.datasets import (
    ADULT_COLUMNS,
    COMPAS_COLUMNS,
    DATA_HOME_ENV,
    TabularDataset,
    export_split,
    load_adult,
    load_compas,
    load_csv_dataset,
    make_cohort,
    resolve_data_home,
    split_table,
)


@contextmanager
def _raises(code: ErrorCode, match: str) -> Iterator[pytest.ExceptionInfo[Fair4FreeError]]:
    with pytest.raises(Fair4FreeError, match=match) as info:
        yield info
    assert info.value.code is code, info.value.code


def _shared_home() -> Path:
    value = os.environ.get(DATA_HOME_ENV)
    return Path(value) if value else Path(__file__).parents[2] / "shared" / "datasets"


@pytest.fixture(scope="module")
def data_home() -> Path:
    home = _shared_home()
    if not home.is_dir():
        pytest.skip(f"benchmark data folder {home} is absent")
    return home


@pytest.fixture(scope="module")
def adult(data_home: Path) -> TabularDataset:
    return load_adult(data_home)


def _dpr(frame: pd.DataFrame) -> float:
    rates = frame.groupby("sex")["readmitted"].apply(lambda s: float((s == "yes").mean()))
    return float(rates.min() / rates.max())


# -- data home -------------------------------------------------------------------------------------


def test_resolve_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path / "env-home"))
    assert resolve_data_home(tmp_path) == tmp_path
    with _raises(ErrorCode.DATA_HOME_MISSING, r"env-home' \(from FAIR4FREE_DATA_HOME\)"):
        resolve_data_home(None)
    (tmp_path / "env-home").mkdir()
    assert resolve_data_home(None) == tmp_path / "env-home"
    with _raises(ErrorCode.DATA_HOME_MISSING, r"'.*nowhere' \(from --data-home\) is not a folder"):
        resolve_data_home(tmp_path / "nowhere")
    monkeypatch.delenv(DATA_HOME_ENV)
    with _raises(ErrorCode.DATA_HOME_MISSING, "--data-home not given and FAIR4FREE_DATA_HOME"):
        resolve_data_home(None)


# -- benchmark files -------------------------------------------------------------------------------


def test_adult(adult: TabularDataset) -> None:
    frame = adult.frame
    assert frame.shape == (48_842, 15) and tuple(frame.columns) == ADULT_COLUMNS
    assert set(frame["income"]) == {"<=50K", ">50K"}
    assert frame["workclass"].isna().sum() > 0 and str(frame["workclass"].dtype) == "str"
    assert str(frame["age"].dtype) == "int64"
    schema = adult.schema()
    assert (schema.target, schema.sensitive, schema.positive_class) == ("income", "sex", ">50K")
    assert schema.missing_token == "?"


def test_adult_decodes_exactly(adult: TabularDataset) -> None:
    encoder = TableEncoder.fit(adult.frame, adult.schema())
    pd.testing.assert_frame_equal(encoder.decode(*encoder.encode(adult.frame)), adult.frame)


def test_compas(data_home: Path) -> None:
    compas = load_compas(data_home)
    assert compas.frame.shape == (6_172, 10) and tuple(compas.frame.columns) == COMPAS_COLUMNS
    assert set(compas.frame["race"]) == {"African-American", "Other"}
    schema = compas.schema()
    assert (schema.target, schema.sensitive, schema.positive_class) == ("two_year_recid", "race", 1)
    encoder = TableEncoder.fit(compas.frame, schema)
    pd.testing.assert_frame_equal(encoder.decode(*encoder.encode(compas.frame)), compas.frame)


def _copy(data_home: Path, tmp_path: Path, relative: str) -> Path:
    target = tmp_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_home / relative, target)
    target.chmod(0o644)
    return target


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_adult_is_refused(data_home: Path, tmp_path: Path) -> None:
    _copy(data_home, tmp_path, "adult/adult.data")
    with _raises(ErrorCode.DATA_HOME_MISSING, r"expected dataset file '.*adult\.test'"):
        load_adult(tmp_path)
    _copy(data_home, tmp_path, "adult/adult.test")
    _flip_byte(tmp_path / "adult" / "adult.data")
    with _raises(ErrorCode.DATASET_CORRUPT, r"adult\.data' has sha256 \w+, expected 5b0026"):
        load_adult(tmp_path)


def test_corrupt_compas_is_refused(data_home: Path, tmp_path: Path) -> None:
    with _raises(ErrorCode.DATA_HOME_MISSING, r"compas-scores-two-years\.csv'"):
        load_compas(tmp_path)
    _flip_byte(_copy(data_home, tmp_path, "compas/compas-scores-two-years.csv"))
    with _raises(ErrorCode.DATASET_CORRUPT, r"compas-scores-two-years\.csv' has sha256"):
        load_compas(tmp_path)


# -- user CSV, split, export -----------------------------------------------------------------------


def test_load_csv_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ward-7.csv"
    path.write_text("age,sex,outcome\n30,F,yes\n?,M,no\n50,F,no\n")
    dataset = load_csv_dataset(path, target="outcome", sensitive="sex")
    assert (dataset.name, dataset.missing_token) == ("ward-7", "?")
    assert dataset.schema().missing_token == "?"
    with _raises(ErrorCode.COLUMN_UNKNOWN, r"column 'income' is not in '.*ward-7\.csv'"):
        load_csv_dataset(path, target="income", sensitive="sex")


def test_split_table_is_stratified_and_deterministic() -> None:
    frame = make_cohort(2_000, seed=1).frame
    train, test = split_table(frame, target="readmitted", test_fraction=0.25, seed=4)
    assert len(train) + len(test) == len(frame) and len(test) == pytest.approx(500, abs=1)
    rate = (frame["readmitted"] == "yes").mean()
    assert (test["readmitted"] == "yes").mean() == pytest.approx(rate, abs=0.002)
    again_train, _ = split_table(frame, target="readmitted", test_fraction=0.25, seed=4)
    pd.testing.assert_frame_equal(train, again_train)
    other_train, _ = split_table(frame, target="readmitted", test_fraction=0.25, seed=5)
    assert not train.equals(other_train)
    merged = pd.concat([train, test]).sort_values(list(frame.columns)).reset_index(drop=True)
    expected = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, expected)


def test_split_table_errors() -> None:
    frame = pd.DataFrame({"t": ["a"] * 50 + ["b"] * 2, "x": range(52)})
    with _raises(ErrorCode.CONFIG_INVALID, r"class 'b' of 't' \(2 rows\) would land only in train"):
        split_table(frame, target="t", test_fraction=0.2)
    with _raises(ErrorCode.CONFIG_INVALID, "would land only in test"):
        split_table(frame, target="t", test_fraction=0.99)
    with _raises(ErrorCode.CONFIG_INVALID, r"test_fraction must lie in \(0, 1\), not 1.0"):
        split_table(frame, target="t", test_fraction=1.0)
    with _raises(ErrorCode.CONFIG_INVALID, "has one class"):
        split_table(frame.assign(t="a"), target="t")
    with _raises(ErrorCode.COLUMN_UNKNOWN, "target column 'y'"):
        split_table(frame, target="y")
    with _raises(ErrorCode.COLUMN_UNSUPPORTED, "missing values"):
        split_table(frame.assign(t=[None] + ["a"] * 51), target="t")


def test_export_split_round_trips(tmp_path: Path) -> None:
    cohort = make_cohort(500, seed=2)
    train, test = split_table(cohort.frame, target=cohort.target)
    paths = export_split(train, test, tmp_path / "out" / "split", cohort.schema())
    assert [p.name for p in paths] == ["train.csv", "test.csv"]
    pd.testing.assert_frame_equal(read_table(paths[0]), train)
    pd.testing.assert_frame_equal(read_table(paths[1]), test)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with _raises(ErrorCode.OUTPUT_UNWRITABLE, r"cannot create '.*file[/\\]sub'"):
        export_split(train, test, blocker / "sub", cohort.schema())


# -- synthetic cohort ------------------------------------------------------------------------------


def test_cohort_shape_types_and_bias() -> None:
    start = time.perf_counter()
    cohort = make_cohort(50_000)
    assert time.perf_counter() - start < 1.0
    frame = cohort.frame
    assert [str(t) for t in frame.dtypes] == [
        "int64",
        "str",
        "float64",
        "int64",
        "str",
        "bool",
        "str",
        "str",
        "int64",
        "float64",
        "int64",
        "str",
    ]
    assert 0.02 < frame["insurance"].isna().mean() < 0.06
    assert 0.09 < frame["hba1c"].isna().mean() < 0.15
    assert 0.3 < _dpr(frame) < 0.6
    assert _dpr(make_cohort(50_000, bias=0.0).frame) > 0.93
    cardiology = frame["referral"] == "cardiology"
    assert cardiology[frame["sex"] == "M"].mean() > 3 * cardiology[frame["sex"] == "F"].mean()
    schema = cohort.schema()
    assert (schema.target, schema.sensitive, schema.positive_class) == ("readmitted", "sex", "yes")
    pd.testing.assert_frame_equal(make_cohort(50_000).frame, frame)
    assert not make_cohort(1_000, seed=1).frame.equals(make_cohort(1_000, seed=2).frame)


def test_cohort_encodes_and_decodes() -> None:
    cohort = make_cohort(3_000, seed=4)
    encoder = TableEncoder.fit(cohort.frame, cohort.schema())
    decoded = encoder.decode(*encoder.encode(cohort.frame))
    floats = ["bmi", "hba1c"]
    others = [name for name in cohort.frame.columns if name not in floats]
    pd.testing.assert_frame_equal(decoded[others], cohort.frame[others])
    for name in floats:
        np.testing.assert_allclose(decoded[name], cohort.frame[name], rtol=1e-5)


@pytest.mark.parametrize(
    ("n_rows", "bias", "match"),
    [
        (99, 0.5, "n_rows must be an integer >= 100, not 99"),
        (1000.0, 0.5, "n_rows must be an integer >= 100, not 1000.0"),
        (1000, 1.5, r"bias must lie in \[0, 1\], not 1.5"),
        (1000, -0.1, r"bias must lie in \[0, 1\]"),
    ],
)
def test_cohort_arguments(n_rows: int, bias: float, match: str) -> None:
    with _raises(ErrorCode.CONFIG_INVALID, match):
        make_cohort(n_rows, bias=bias)
