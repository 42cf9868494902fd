"""The hold-out drawn at train time: recorded by position and file hash, found again exactly."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import Cohort
from fair4free.common.artifacts import METADATA_FILE
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.table_io import read_table
from fair4free.data_owner.cli import main
from fair4free.data_owner.datasets import split_mask
from fair4free.data_owner.holdout import SPLIT_KEY, load_split, recorded_split
from fair4free.data_owner.registry import load_teacher

TINY_MODEL = ("--epochs", "1", "--latent-dim", "4", "--hidden", "16", "--batch-size", "256")


def train_model(csv: Path, out: Path, *args: str) -> int:
    """``fair4free-owner train`` on the cohort's columns, as small as a model gets."""
    return main(["train", "--data", str(csv), "--target", "readmitted", "--sensitive", "sex",
                 "--out", str(out), *TINY_MODEL, *args])  # fmt: skip


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    path = tmp_path_factory.mktemp("holdout-data") / "records.csv"
    cohort.train.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, cohort_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("holdout-models") / "teacher"
    assert train_model(cohort_csv, out, "--holdout-fraction", "0.25", "--seed", "3") == 0
    return out


def test_train_records_the_split_by_file_hash_and_positions(
    model_dir: Path, cohort_csv: Path
) -> None:
    metadata = load_teacher(model_dir).metadata
    split = metadata[SPLIT_KEY]
    rows = len(read_table(cohort_csv))
    assert split["data_sha256"] == hashlib.sha256(cohort_csv.read_bytes()).hexdigest()
    assert (split["rows"], split["holdout_fraction"], split["seed"]) == (rows, 0.25, 3)
    index = split["holdout_index"]
    assert index == sorted(set(index)) and all(0 <= i < rows for i in index)
    assert metadata["training_rows"] == rows - len(index)  # the teacher saw the rest only
    # positions, not values: no record of the table is copied into the model's metadata
    assert set(json.loads((model_dir / METADATA_FILE).read_text())[SPLIT_KEY]) == set(split)


def test_load_split_returns_the_rows_train_held_out(model_dir: Path, cohort_csv: Path) -> None:
    metadata = load_teacher(model_dir).metadata
    train, holdout = load_split(metadata, cohort_csv)
    table = read_table(cohort_csv)
    index = metadata[SPLIT_KEY]["holdout_index"]
    pd.testing.assert_frame_equal(holdout, table.iloc[index].reset_index(drop=True))
    pd.testing.assert_frame_equal(train, table.drop(index=index).reset_index(drop=True))
    # stratified by (target, sensitive): each stratum holds out its rounded quarter
    strata = ["readmitted", "sex"]
    for key, size in table.groupby(strata).size().items():
        held = int((holdout[strata] == pd.Series(key, index=strata)).all(axis=1).sum())
        assert held == math.floor(size * 0.25 + 0.5), key


def test_load_split_finds_the_file_by_content_not_name(
    model_dir: Path, cohort_csv: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "renamed.csv"
    copy.write_bytes(cohort_csv.read_bytes())
    metadata = load_teacher(model_dir).metadata
    assert len(load_split(metadata, copy)[1]) == len(metadata[SPLIT_KEY]["holdout_index"])


def test_load_split_refuses_a_table_the_model_was_not_trained_on(
    model_dir: Path, cohort_csv: Path, tmp_path: Path
) -> None:
    edited = tmp_path / "edited.csv"
    lines = cohort_csv.read_text().splitlines(keepends=True)
    edited.write_text("".join(lines[:-1]))  # one record fewer
    with pytest.raises(Fair4FreeError) as caught:
        load_split(load_teacher(model_dir).metadata, edited, model="models/teacher")
    assert caught.value.code is ErrorCode.SCHEMA_MISMATCH
    actual = hashlib.sha256(edited.read_bytes()).hexdigest()
    assert f"{edited} is not the table model models/teacher was trained on" in caught.value.detail
    assert actual[:16] in caught.value.detail


def test_holdout_fraction_zero_trains_on_every_row_and_has_no_holdout(
    tmp_path: Path, cohort_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "teacher"
    assert train_model(cohort_csv, out, "--holdout-fraction", "0") == 0
    assert "no hold-out" in capsys.readouterr().out
    metadata = load_teacher(out).metadata
    assert SPLIT_KEY not in metadata
    assert metadata["training_rows"] == len(read_table(cohort_csv))
    with pytest.raises(Fair4FreeError) as caught:
        load_split(metadata, cohort_csv, model=str(out))
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert f"model {out} has no hold-out" in caught.value.detail


@pytest.mark.parametrize("fraction", ["1", "-0.1", "nan"])
def test_train_refuses_a_holdout_fraction_out_of_range(
    tmp_path: Path, cohort_csv: Path, capsys: pytest.CaptureFixture[str], fraction: str
) -> None:
    out = tmp_path / "teacher"
    assert train_model(cohort_csv, out, "--holdout-fraction", fraction) == ExitCode.USAGE
    assert "--holdout-fraction must be 0 or lie in (0, 1)" in capsys.readouterr().err
    assert not out.exists()


def test_a_damaged_split_record_is_refused() -> None:
    good = {"data_sha256": "ab", "rows": 10, "holdout_fraction": 0.2, "seed": 0}
    for index in ([3, 1], [1, 1], [10], ["x"]):
        with pytest.raises(Fair4FreeError) as caught:
            recorded_split({SPLIT_KEY: {**good, "holdout_index": index}}, model="m")
        assert caught.value.code is ErrorCode.ARTIFACT_CORRUPT, index
    with pytest.raises(Fair4FreeError, match="malformed hold-out record"):
        recorded_split({SPLIT_KEY: {"holdout_index": []}}, model="m")


def test_split_mask_by_group_is_seeded_and_keeps_small_and_missing_groups() -> None:
    frame = pd.DataFrame(
        {
            "y": ["a", "b"] * 50 + ["a"],
            "s": ["F"] * 60 + [None] * 30 + ["M"] * 10 + ["rare"],
        }
    )
    mask = split_mask(frame, target="y", test_fraction=0.2, seed=1, also_by=("s",))
    assert np.array_equal(mask, split_mask(frame, target="y", test_fraction=0.2, seed=1,
                                           also_by=("s",)))  # fmt: skip
    assert not np.array_equal(
        mask, split_mask(frame, target="y", test_fraction=0.2, seed=2, also_by=("s",))
    )
    missing = frame["s"].isna().to_numpy()
    assert mask[missing].sum() == 6  # the missing group is a stratum: 3 of 15 per class
    assert not mask[-1]  # a one-row stratum stays whole (in training)
    with pytest.raises(Fair4FreeError, match="'s2' is not in the table"):
        split_mask(frame, target="y", also_by=("s2",))


def test_split_mask_by_group_still_needs_every_class_in_both_parts() -> None:
    frame = pd.DataFrame({"y": ["a"] * 40 + ["b"], "s": ["F", "M"] * 20 + ["F"]})
    with pytest.raises(Fair4FreeError, match="would land only in train") as caught:
        split_mask(frame, target="y", test_fraction=0.2, also_by=("s",))
    assert caught.value.code is ErrorCode.CONFIG_INVALID
