"""Schema inference, its JSON form, and reading and writing tables on real files."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.schema import ColumnKind, ColumnRole, ColumnSpec, TableSchema, infer_schema
from fair4free.common.table_io import detect_missing_token, read_table, write_table


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [30, 40, 50, 60, 70, 80],
            "blood-type": ["A pos", "B neg", None, "A pos", "O", "O"],
            "score": [1.5, np.nan, 2.5, 3.0, 0.5, 1.0],
            "flag": [True, False, True, True, False, False],
            "sex": ["F", "M", "F", "M", "F", "M"],
            "label": [0, 1, 0, 0, 1, 0],
        }
    )


def _schema(**overrides: Any) -> TableSchema:
    return infer_schema(_frame(), target="label", sensitive="sex", **overrides)


@contextmanager
def _raises(code: ErrorCode, match: str) -> Iterator[pytest.ExceptionInfo[Fair4FreeError]]:
    with pytest.raises(Fair4FreeError, match=match) as info:
        yield info
    assert info.value.code is code, info.value.code
    assert "\n" not in info.value.detail


def test_infer_kinds_roles_and_types() -> None:
    schema = _schema()
    assert schema.names == ("age", "blood-type", "score", "flag", "sex", "label")
    age, blood, score, flag, sex, label = schema.columns
    assert (age.kind, age.integer, age.has_missing) == (ColumnKind.NUMERIC, True, False)
    assert (score.kind, score.integer, score.has_missing) == (ColumnKind.NUMERIC, False, True)
    assert blood.categories == ("A pos", "B neg", "O") and blood.has_missing
    assert flag.categories == (False, True) and type(flag.categories[0]) is bool
    assert sex.role is ColumnRole.SENSITIVE and label.role is ColumnRole.TARGET
    assert label.kind is ColumnKind.CATEGORICAL and label.categories == (0, 1)
    assert all(type(value) is int for value in label.categories)
    assert schema.positive_class == 1 and type(schema.positive_class) is int
    assert [spec.name for spec in schema.feature_columns] == ["age", "blood-type", "score", "flag"]
    assert schema.column("score") is score
    assert schema.target_column is label and schema.sensitive_column is sex


def test_dtypes_are_canonical() -> None:
    schema = _schema()
    assert [spec.dtype for spec in schema.columns] == [
        "int64",
        "str",
        "float64",
        "bool",
        "str",
        "int64",
    ]
    assert ColumnSpec(name="n", kind=ColumnKind.NUMERIC, integer=True, has_missing=True).dtype == (
        "Int64"
    )
    flags = ColumnSpec(
        name="b", kind=ColumnKind.CATEGORICAL, has_missing=True, categories=(False, True)
    )
    assert flags.dtype == "boolean"


def test_overrides() -> None:
    schema = _schema(categorical=["age"])
    assert schema.column("age").categories == (30, 40, 50, 60, 70, 80)
    frame = _frame().assign(code=[1, 2, 3, 1, 2, 3])
    as_numeric = infer_schema(frame, target="label", sensitive="sex", numeric=["code"])
    assert as_numeric.column("code").kind is ColumnKind.NUMERIC


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1, 1], 1),
        ([True, False, False, False], True),
        (["no", "yes", "no", "no"], "yes"),
        (["b", "a", "b", "a"], "b"),
    ],
)
def test_default_positive_class(values: list[object], expected: object) -> None:
    frame = pd.DataFrame({"s": ["x", "y", "x", "y"], "t": values})
    schema = infer_schema(frame, target="t", sensitive="s")
    assert schema.positive_class == expected and type(schema.positive_class) is type(expected)


def test_explicit_positive_class() -> None:
    assert _schema(positive_class=0).positive_class == 0
    spelled = _schema(positive_class="1").positive_class
    assert spelled == 1 and type(spelled) is int
    with _raises(ErrorCode.CONFIG_INVALID, r"positive_class '2' is not a value of target 'label'"):
        _schema(positive_class="2")
    with _raises(ErrorCode.CONFIG_INVALID, r"positive_class True is not a value"):
        _schema(positive_class=True)


@pytest.mark.parametrize(
    ("kwargs", "frame_change", "code", "match"),
    [
        ({"target": "nope"}, None, ErrorCode.COLUMN_UNKNOWN, r"'nope' is not in the table.*age"),
        ({"sensitive": "nope"}, None, ErrorCode.COLUMN_UNKNOWN, r"'nope'.*available: age"),
        ({"categorical": ["zzz"]}, None, ErrorCode.COLUMN_UNKNOWN, r"'zzz'"),
        ({"numeric": ["zzz"]}, None, ErrorCode.COLUMN_UNKNOWN, r"'zzz'"),
        ({"sensitive": "label"}, None, ErrorCode.CONFIG_INVALID, r"both are 'label'"),
        ({"numeric": ["label"]}, None, ErrorCode.CONFIG_INVALID, r"'label' is the target"),
        ({"numeric": ["age"], "categorical": ["age"]}, None, ErrorCode.CONFIG_INVALID, "both"),
        ({"numeric": ["blood-type"]}, None, ErrorCode.COLUMN_UNSUPPORTED, r"'blood-type' holds"),
        ({"numeric": ["flag"]}, None, ErrorCode.COLUMN_UNSUPPORTED, r"'flag' holds bool"),
        ({}, {"sex": ["F"] * 6}, ErrorCode.SENSITIVE_CONSTANT, r"'sex' has 1 distinct"),
        ({}, {"label": [0, 1, 2, 0, 1, 2]}, ErrorCode.TARGET_NOT_BINARY, r"'label' has 3 distinct"),
        ({}, {"label": [1] * 6}, ErrorCode.TARGET_NOT_BINARY, r"has 1 distinct value"),
        ({}, {"label": [0, 1, None, 0, 1, 0]}, ErrorCode.COLUMN_UNSUPPORTED, r"target.*missing"),
        ({}, {"sex": ["F", "M", None, "M", "F", "M"]}, ErrorCode.COLUMN_UNSUPPORTED, "sensitive"),
        ({}, {"score": [np.nan] * 6}, ErrorCode.COLUMN_UNSUPPORTED, r"'score' has no values"),
        ({}, {"score": [1.0, np.inf, 2, 3, 4, 5]}, ErrorCode.COLUMN_UNSUPPORTED, "infinity"),
        ({}, {"blood-type": ["a", 1, "b", 2, "c", 3]}, ErrorCode.COLUMN_UNSUPPORTED, "mixes"),
    ],
)
def test_infer_errors(
    kwargs: dict[str, Any], frame_change: dict[str, list[Any]] | None, code: ErrorCode, match: str
) -> None:
    frame = _frame().assign(**(frame_change or {}))
    arguments: dict[str, Any] = {"target": "label", "sensitive": "sex", **kwargs}
    with _raises(code, match):
        infer_schema(frame, **arguments)


def test_too_many_categories() -> None:
    n = 1001
    frame = pd.DataFrame(
        {
            "code": [f"c{i}" for i in range(n)],
            "s": ["a", "b"] * 500 + ["a"],
            "t": [0, 1] * 500 + [1],
        }
    )
    with _raises(ErrorCode.COLUMN_UNSUPPORTED, r"'code' has 1001 distinct values"):
        infer_schema(frame, target="t", sensitive="s")


def test_schema_json_round_trip() -> None:
    schema = _schema(missing_token="?")
    data = json.loads(json.dumps(schema.to_dict()))
    assert TableSchema.from_dict(data) == schema


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(_schema().to_dict()))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (["target"], KeyError, r"schema\.target: is missing"),
        (["extra"], 1, r"schema\.extra: is not a known field"),
        (["columns"], "abc", r"schema\.columns: must be list"),
        (["columns", 0, "integer"], "yes", r"schema\.columns\[0\]\.integer: must be bool"),
        (["columns", 0, "kind"], "text", r"schema\.columns\[0\]\.kind.*'text'"),
        (["columns", 0, "role"], "boss", r"schema\.columns\[0\]\.role.*'boss'"),
        (["columns", 1, "categories"], ["O", "A pos"], r"columns\[1\].*sorted"),
        (["columns", 1, "categories"], [["x"]], r"columns\[1\]\.categories"),
        (["columns", 3, "categories"], [0, True], r"columns\[3\].*all bool"),
        (["positive_class"], 7, r"positive_class 7 is not a value of target"),
        (["positive_class"], None, r"schema\.positive_class: must be"),
        (["sensitive"], "age", r"exactly 'age' as sensitive"),
        (["columns", 5, "has_missing"], True, r"target column 'label' cannot have missing"),
    ],
)
def test_schema_from_dict_rejects_damage(path: list[Any], value: Any, match: str) -> None:
    with _raises(ErrorCode.ARTIFACT_CORRUPT, match):
        TableSchema.from_dict(_mutated(path, value))


def test_schema_from_dict_rejects_other_version_and_non_object() -> None:
    with _raises(ErrorCode.ARTIFACT_VERSION, "schema version 2"):
        TableSchema.from_dict(_mutated(["version"], 2))
    with _raises(ErrorCode.ARTIFACT_CORRUPT, "must be an object"):
        TableSchema.from_dict([1, 2])


def test_column_unknown() -> None:
    with _raises(ErrorCode.COLUMN_UNKNOWN, r"'weight' is not in the table; available: age"):
        _schema().column("weight")


# -- reading and writing ---------------------------------------------------------------------------


def _write(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_read_table_canonical_dtypes_and_tokens(tmp_path: Path) -> None:
    text = "n,m,x,t,b\n1, 2,1.5,a b,True\n?,3,NaN,N/A,False\nNA,4,,nan,True\n5,6,2.0, c,False\n"
    frame = read_table(_write(tmp_path, text))
    assert [str(t) for t in frame.dtypes] == ["Int64", "int64", "float64", "str", "bool"]
    assert frame["n"].isna().tolist() == [False, True, True, False]
    assert frame["t"].tolist()[0] == "a b" and frame["t"].tolist()[3] == "c"
    assert frame["t"].isna().sum() == 2 and frame["x"].isna().sum() == 2


def test_read_table_without_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "# comment\n1, x\n2, ?\n")
    frame = read_table(path, names=["a", "b"], skip_rows=1, missing_tokens=("?",))
    assert frame["a"].tolist() == [1, 2] and frame["b"].isna().tolist() == [False, True]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "the file is empty"),
        (b"  \n\n", "the file is empty"),
        (b"a,b\n", "header but no data rows"),
        (b"a,b\n1,2\n3\n", "data row 2 has 1 fields, the header has 2"),
        (b"a,b\n1,2\n3,4,5\n", "data row 2 has 3 fields"),
        (b"a,a\n1,2\n", "column name 'a' repeats"),
        (b'a,b\n1,"2\n', r"line \d+: .*"),
        (b"PK\x03\x04\x00\x00binary", "binary file"),
        (b"a,b\n\xff\xfe,1\n", "not UTF-8"),
    ],
)
def test_read_table_unreadable(tmp_path: Path, content: bytes, match: str) -> None:
    path = _write(tmp_path, content)
    with _raises(ErrorCode.FILE_UNREADABLE, match) as info:
        read_table(path)
    assert str(path) in info.value.detail


def test_read_table_missing_file_and_directory(tmp_path: Path) -> None:
    with _raises(ErrorCode.FILE_NOT_FOUND, r"nope\.csv' does not exist"):
        read_table(tmp_path / "nope.csv")
    with _raises(ErrorCode.FILE_UNREADABLE, "it is a directory"):
        read_table(tmp_path)


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("a,b\n1,?\n?,2\n,3\n", "?"),
        ("a,b\n1,NA\nNA,2\n", "NA"),
        ("a,b\n1,\n,2\n", ""),
        ("a,b\n1,2\n", ""),
    ],
)
def test_detect_missing_token(tmp_path: Path, text: str, token: str) -> None:
    assert detect_missing_token(_write(tmp_path, text)) == token


def test_write_table_csv_uses_missing_token_and_schema_order(tmp_path: Path) -> None:
    frame = _frame()
    schema = infer_schema(frame, target="label", sensitive="sex", missing_token="?")
    path = tmp_path / "out.csv"
    write_table(frame[list(reversed(frame.columns))], path, schema)
    lines = path.read_text().splitlines()
    assert lines[0] == "age,blood-type,score,flag,sex,label"
    assert lines[2] == "40,B neg,?,False,M,1"
    assert list(tmp_path.iterdir()) == [path]


def test_write_table_parquet(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "out.parquet"
    write_table(frame, path, _schema())
    back = pd.read_parquet(path)
    assert back["age"].tolist() == frame["age"].tolist()
    assert back["blood-type"].isna().tolist() == frame["blood-type"].isna().tolist()


def test_write_table_parquet_needs_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with _raises(ErrorCode.CONFIG_INVALID, r"pip install 'fair4free\[parquet\]'"):
        write_table(_frame(), tmp_path / "out.parquet", _schema())
    assert list(tmp_path.iterdir()) == []


def test_write_table_failures_leave_no_file(tmp_path: Path) -> None:
    schema = _schema()
    with _raises(ErrorCode.OUTPUT_UNWRITABLE, r"cannot write '.*missing-dir"):
        write_table(_frame(), tmp_path / "missing-dir" / "out.csv", schema)
    occupied = tmp_path / "occupied.csv"
    occupied.mkdir()
    with _raises(ErrorCode.OUTPUT_UNWRITABLE, r"occupied\.csv"):
        write_table(_frame(), occupied, schema)
    assert [p.name for p in tmp_path.iterdir()] == ["occupied.csv"]
    assert occupied.is_dir()
    with _raises(ErrorCode.SCHEMA_MISMATCH, "lacks column.*score"):
        write_table(_frame().drop(columns=["score"]), tmp_path / "x.csv", schema)
