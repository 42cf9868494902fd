"""The owner's hold-out: real rows kept away from the teacher, recorded so they can be found again.

Privacy scores (the release check, the Evaluate RPC) compare synthetic rows with the training rows
and with rows the teacher never saw. Those must be the same rows every time and provably unseen,
so ``train`` draws the split itself and records it in the model's metadata: the SHA-256 of the
CSV file, its row count, the fraction, the seed and the hold-out's row positions in the table as
``table_io.read_table`` loads it. Positions, not values, so no raw record is copied into the
model directory. ``load_split`` re-reads the file, proves by its hash that it is the one the
model was trained on, and returns both parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.table_io import read_table
from fair4free.data_owner.datasets import split_mask

SPLIT_KEY = "split"
"""Key of the split record in the teacher's metadata."""

DEFAULT_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True, kw_only=True)
class HoldoutSplit:
    """Which rows of which file the teacher did not train on."""

    data_sha256: str
    rows: int
    holdout_fraction: float
    seed: int
    holdout_index: tuple[int, ...]

    def to_metadata(self) -> dict[str, Any]:
        """The record stored under ``SPLIT_KEY`` in the model metadata (JSON types only)."""
        return {
            "data_sha256": self.data_sha256,
            "rows": self.rows,
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "holdout_index": list(self.holdout_index),
        }


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks so a large table does not sit in memory twice."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise Fair4FreeError(
            ErrorCode.FILE_NOT_FOUND, f"table file '{path}' does not exist"
        ) from None
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.FILE_UNREADABLE, f"cannot read table '{path}': {exc.strerror or exc}"
        ) from None
    return digest.hexdigest()


def draw_split(
    frame: pd.DataFrame,
    *,
    data_path: Path,
    target: str,
    sensitive: str,
    fraction: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, HoldoutSplit | None]:
    """Split ``frame`` (as read from ``data_path``) into training rows and a hold-out.

    Stratified by (target, sensitive) so each group is represented in the hold-out as in the
    training rows; the per-group privacy scores need that. ``fraction`` 0 keeps every row for
    training and records no split (returns ``None``): the model then has no hold-out.
    """
    if fraction == 0:
        return frame, frame.iloc[:0], None
    if not 0.0 < fraction < 1.0:
        detail = f"--holdout-fraction must be 0 or lie in (0, 1), not {fraction}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    in_holdout = split_mask(
        frame, target=target, test_fraction=fraction, seed=seed, also_by=(sensitive,)
    )
    split = HoldoutSplit(
        data_sha256=file_sha256(data_path),
        rows=len(frame),
        holdout_fraction=fraction,
        seed=seed,
        holdout_index=tuple(int(i) for i in np.flatnonzero(in_holdout)),
    )
    train, holdout = _parts(frame, in_holdout)
    return train, holdout, split


def _parts(
    frame: pd.DataFrame, in_holdout: npt.NDArray[np.bool_]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame[~in_holdout].reset_index(drop=True), frame[in_holdout].reset_index(drop=True)


def recorded_split(metadata: Mapping[str, Any], *, model: str) -> HoldoutSplit:
    """The split a teacher's metadata records; refuses a model trained without a hold-out.

    :raises Fair4FreeError: CONFIG_INVALID when the model has no hold-out, ARTIFACT_CORRUPT when
        the record is malformed.
    """
    record = metadata.get(SPLIT_KEY)
    if record is None:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"model {model} has no hold-out (trained with --holdout-fraction 0, or before "
            "hold-outs were recorded), so its privacy cannot be checked against unseen rows; "
            "retrain it with --holdout-fraction above 0",
        )
    try:
        index = tuple(int(i) for i in record["holdout_index"])
        split = HoldoutSplit(
            data_sha256=str(record["data_sha256"]),
            rows=int(record["rows"]),
            holdout_fraction=float(record["holdout_fraction"]),
            seed=int(record["seed"]),
            holdout_index=index,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"model {model}: malformed hold-out record ({exc})"
        ) from None
    if any(not 0 <= i < split.rows for i in index) or list(index) != sorted(set(index)):
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT,
            f"model {model}: hold-out positions are not sorted, unique and within {split.rows}",
        )
    return split


def load_split(
    teacher_metadata: Mapping[str, Any], data_path: Path, *, model: str = "the model"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-read the training CSV and return (training rows, hold-out rows) as at train time.

    The training rows are the table's rows before label massaging: the rows the teacher saw,
    with their recorded labels. ``model`` names the model in error messages (its directory or id).

    :raises Fair4FreeError: SCHEMA_MISMATCH when ``data_path`` is not the file the model was
        trained on (by SHA-256, then row count), CONFIG_INVALID when the model has no hold-out.
    """
    split = recorded_split(teacher_metadata, model=model)
    actual = file_sha256(data_path)
    if actual != split.data_sha256:
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH,
            f"{data_path} is not the table model {model} was trained on (sha256 {actual[:16]}..., "
            f"the model records {split.data_sha256[:16]}...); pass the CSV given to 'train --data'",
        )
    frame = read_table(data_path)
    if len(frame) != split.rows:  # same bytes, so only a change in how tables are read
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH,
            f"{data_path} reads as {len(frame)} rows, model {model} records {split.rows}",
        )
    in_holdout = np.zeros(len(frame), dtype=bool)
    in_holdout[list(split.holdout_index)] = True
    return _parts(frame, in_holdout)
