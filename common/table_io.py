"""Reading and writing tables as files, keeping how the source spelled its values.

"The original schema" includes the file's missing-value token and value spellings, which only the
reader sees. Dtypes are canonical: a table read here holds ``str`` for text, ``int64`` for
integers (``Int64`` when values are missing), ``float64`` for reals and ``bool`` for booleans
(``boolean`` when values are missing), exactly what the encoder's ``decode`` returns.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.schema import TableSchema

DEFAULT_MISSING_TOKENS: tuple[str, ...] = ("", "?", "NA", "N/A", "NaN", "nan")


def _unreadable(path: Path, reason: str) -> Fair4FreeError:
    one_line = " ".join(reason.split())
    return Fair4FreeError(ErrorCode.FILE_UNREADABLE, f"cannot read table '{path}': {one_line}")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"table file '{path}' does not exist")
    if path.is_dir():
        raise _unreadable(path, "it is a directory")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error.strerror or str(error)) from None
    if b"\x00" in data:
        raise _unreadable(path, "it is a binary file (NUL byte), not CSV text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _unreadable(path, f"not UTF-8 text (byte at offset {error.start})") from None
    if not text.strip():
        raise _unreadable(path, "the file is empty")
    return text


def _csv_rows(text: str, path: Path, skip_rows: int) -> Iterable[list[str]]:
    """Yield the non-blank rows after ``skip_rows`` lines, failing on malformed CSV."""
    lines = io.StringIO(text)
    for _ in range(skip_rows):
        lines.readline()
    reader = csv.reader(lines, skipinitialspace=True, strict=True)
    try:
        yield from (row for row in reader if row)
    except csv.Error as error:
        raise _unreadable(path, f"line {reader.line_num + skip_rows}: {error}") from None


def _check_shape(text: str, path: Path, names: Sequence[str] | None, skip_rows: int) -> None:
    """Reject ragged rows and repeated header names, which pandas would silently paper over."""
    rows = iter(_csv_rows(text, path, skip_rows))
    header = list(names) if names is not None else next(rows, None)
    if header is None:
        raise _unreadable(path, "the file has no header row")
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        raise _unreadable(path, f"column name '{repeated[0]}' repeats in the header")
    count = 0
    for count, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise _unreadable(
                path, f"data row {count} has {len(row)} fields, the header has {len(header)}"
            )
    if count == 0:
        raise _unreadable(path, "the file has a header but no data rows")


def _canonical(column: pd.Series) -> pd.Series:
    """Turn pandas' nullable dtypes into the canonical ones the module docstring lists."""
    dtype = str(column.dtype)
    missing = bool(column.isna().any())
    if dtype == "Int64":
        return column if missing else column.astype("int64")
    if dtype == "boolean":
        return column if missing else column.astype("bool")
    if dtype == "Float64":
        return pd.Series(column.to_numpy(dtype="float64", na_value=np.nan), name=column.name)
    if dtype == "string":
        return column.astype("str")
    return column


def read_table(
    path: Path,
    *,
    missing_tokens: Sequence[str] = DEFAULT_MISSING_TOKENS,
    names: Sequence[str] | None = None,
    skip_rows: int = 0,
) -> pd.DataFrame:
    """Read a CSV table into canonical dtypes, so that what is decoded later can equal it.

    Fields are stripped of leading spaces and every token in ``missing_tokens`` becomes missing.
    Pass ``names`` for a file without a header row and ``skip_rows`` to skip leading lines (such
    as a comment). Integer columns with missing values stay integers (``Int64``).
    """
    path = Path(path)
    text = _read_text(path)
    _check_shape(text, path, names, skip_rows)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            header=None if names is not None else 0,
            names=list(names) if names is not None else None,
            skiprows=skip_rows,
            skipinitialspace=True,
            na_values=list(missing_tokens),
            keep_default_na=False,
            dtype_backend="numpy_nullable",
            index_col=False,
        )
    except (ValueError, pd.errors.ParserError) as error:
        raise _unreadable(path, str(error)) from None
    return pd.DataFrame({name: _canonical(frame[name]) for name in frame.columns})


def detect_missing_token(
    path: Path, *, missing_tokens: Sequence[str] = DEFAULT_MISSING_TOKENS
) -> str:
    """Find how a CSV spells missing values, so that output files spell them the same way.

    Returns the token from ``missing_tokens`` occurring most often as a whole field (the earlier
    token on a tie), or ``""`` when none occurs.
    """
    path = Path(path)
    counts: Counter[str] = Counter()
    tokens = set(missing_tokens)
    rows = iter(_csv_rows(_read_text(path), path, 0))
    next(rows, None)
    for row in rows:
        counts.update(field for field in row if field in tokens)
    if not counts:
        return ""
    return max(missing_tokens, key=lambda token: (counts[token], -missing_tokens.index(token)))


def write_table(df: pd.DataFrame, path: Path, schema: TableSchema) -> None:
    """Write a table in the schema's column order, atomically, so no half file is ever left.

    A ``.parquet`` suffix writes Parquet (needs the ``parquet`` extra); anything else writes CSV
    with missing values spelled as ``schema.missing_token``.
    """
    path = Path(path)
    absent = [name for name in schema.names if name not in df.columns]
    if absent:
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH, f"table to write lacks column(s) {', '.join(absent)}"
        )
    ordered = df.loc[:, list(schema.names)]
    parquet = path.suffix.lower() == ".parquet"
    if parquet and find_spec("pyarrow") is None:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"writing '{path}' needs pyarrow: pip install 'fair4free[parquet]'",
        )
    temp: str | None = None
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        if parquet:
            ordered.to_parquet(temp, index=False)
        else:
            ordered.to_csv(temp, index=False, na_rep=schema.missing_token, lineterminator="\n")
        os.replace(temp, path)
        temp = None
    except OSError as error:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"cannot write '{path}': {error.strerror or error}",
        ) from None
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
