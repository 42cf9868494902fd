"""Score synthetic table files against a real test file, and show the scores side by side.

The consumer's generated rows and the public test split arrive as files, so this is the thin layer
of reading them, filling in the positive class the user left out, and printing one line per table.
The scoring itself lives in ``fair4free.common.metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import ClassLabel, EvaluationReport, evaluate_synthetic

# Besides pandas' default missing markers: the UCI tables (Adult among them) write '?'.
_NA_VALUES = ("?",)
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("DPR", "dpr"),
    ("EOR", "eor"),
    ("FTU", "ftu"),
    ("Acc", "accuracy"),
    ("F1", "f1"),
    ("Recall", "recall"),
    ("AUROC", "auroc"),
    ("Density", "density"),
    ("Coverage", "coverage"),
    ("a-Prec", "alpha_precision"),
    ("b-Rec", "beta_recall"),
    ("Auth", "authenticity"),
)


def evaluate_files(
    synthetic_path: str | os.PathLike[str],
    real_path: str | os.PathLike[str],
    *,
    target: str,
    sensitive: str,
    positive_class: ClassLabel | None = None,
    seed: int = 0,
) -> EvaluationReport:
    """Score the synthetic table file against the real table file (CSV, or ``.parquet``).

    Without ``positive_class`` the usual convention is assumed: 1 for a 0/1 target, True for a
    boolean one, otherwise the rarer class of the real table, which is the outcome fairness is
    usually about (a loan granted, a high income).
    """
    real = _read_table(Path(real_path))
    synthetic = _read_table(Path(synthetic_path))
    if positive_class is None:
        positive_class = _infer_positive_class(real, target=target)
    return evaluate_synthetic(
        synthetic,
        real,
        target=target,
        sensitive=sensitive,
        positive_class=positive_class,
        seed=seed,
    )


def format_report_table(reports: Mapping[str, EvaluationReport]) -> str:
    """Lay reports out one per line, so a synthetic table reads against a real baseline."""
    name_width = max((len(name) for name in reports), default=0)
    value_width = max(len(header) for header, _ in _TABLE_COLUMNS)
    lines = [
        " " * name_width + "".join(f"  {header:>{value_width}}" for header, _ in _TABLE_COLUMNS)
    ]
    for name, report in reports.items():
        values = report.to_dict()
        lines.append(
            f"{name:<{name_width}}"
            + "".join(f"  {_cell(values[field]):>{value_width}}" for _, field in _TABLE_COLUMNS)
        )
    return "\n".join(lines)


def _cell(value: float | int | None) -> str:
    """Three decimals; an undefined score (a 0/0 ratio) shows as n/a rather than a number."""
    return "n/a" if value is None else f"{value:.3f}"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"no such file: {path}")
    if path.is_dir():
        raise Fair4FreeError(ErrorCode.FILE_UNREADABLE, f"{path} is a directory, not a table")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, skipinitialspace=True, na_values=list(_NA_VALUES))
    except ImportError:
        raise Fair4FreeError(
            ErrorCode.FILE_UNREADABLE,
            f"reading {path} needs pyarrow; install fair4free[parquet]",
        ) from None
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        # UnicodeDecodeError and pyarrow's ArrowInvalid are ValueErrors too.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Fair4FreeError(
            ErrorCode.FILE_UNREADABLE, f"cannot read {path} as a table: {reason}"
        ) from None


def _infer_positive_class(real: pd.DataFrame, *, target: str) -> ClassLabel:
    if target not in real.columns:
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNKNOWN, f"the real table has no target column {target!r}"
        )
    counts = real[target].dropna().value_counts()
    if len(counts) != 2:
        raise Fair4FreeError(
            ErrorCode.TARGET_NOT_BINARY,
            f"the real target {target!r} has {len(counts)} classes, not 2",
        )
    classes = [_python_value(value) for value in counts.index]
    if all(isinstance(value, bool) for value in classes):
        return True
    if all(isinstance(value, int | float) for value in classes) and set(classes) == {0, 1}:
        return 1
    # The rarer class; equal counts fall back to the order of the labels' text, for repeatability.
    frequency = {value: int(count) for value, count in zip(classes, counts, strict=True)}
    return min(classes, key=lambda value: (frequency[value], str(value)))


def _python_value(value: object) -> ClassLabel:
    """Turn a numpy scalar from pandas into the plain Python value the metrics compare."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
