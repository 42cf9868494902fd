"""The shape of a private table, as both parties must agree on it to decode rows exactly.

The owner infers a ``TableSchema`` from its table once; it travels with the model as JSON so that
the other party can turn model outputs back into rows with the original column names, order,
value spellings, dtypes and missing-value token. Files are read and written by ``table_io``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import numpy as np
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.stored_state import corrupt, fields, typed

Category = str | int | float | bool
"""A categorical value in its original Python type (never a numpy scalar)."""

SCHEMA_VERSION = 1
MAX_CATEGORIES = 1000
_CATEGORY_TYPES: tuple[type, ...] = (str, int, float, bool)


class ColumnKind(Enum):
    """How a column is modelled: a continuous value or one of a closed set of values."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class ColumnRole(Enum):
    """What a column is for: fairness treats the target and the sensitive column specially."""

    FEATURE = "feature"
    TARGET = "target"
    SENSITIVE = "sensitive"


def _invalid(detail: str) -> Fair4FreeError:
    return Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)


@dataclass(frozen=True, kw_only=True)
class ColumnSpec:
    """One column as it must be reproduced: kind, role and the values or number type it holds.

    For categorical columns ``categories`` lists the observed values in sorted order, in their
    original Python type; a missing value, when ``has_missing``, gets a slot of its own after
    them. For numeric columns ``integer`` says whether values are whole numbers to be written back
    without a decimal point.
    """

    name: str
    kind: ColumnKind
    role: ColumnRole = ColumnRole.FEATURE
    integer: bool = False
    has_missing: bool = False
    categories: tuple[Category, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _invalid(f"column name {self.name!r} must be a non-empty string")
        if self.kind is ColumnKind.NUMERIC:
            if self.categories:
                raise _invalid(f"numeric column '{self.name}' cannot list categories")
            if self.role is not ColumnRole.FEATURE:
                raise _invalid(f"{self.role.value} column '{self.name}' must be categorical")
            return
        if self.integer:
            raise _invalid(f"categorical column '{self.name}' cannot be marked integer")
        if self.role is not ColumnRole.FEATURE and self.has_missing:
            raise _invalid(f"{self.role.value} column '{self.name}' cannot have missing values")
        _check_categories(self.name, self.categories)

    @property
    def dtype(self) -> str:
        """The canonical pandas dtype of this column, so decoded tables equal read ones."""
        if self.kind is ColumnKind.NUMERIC:
            if self.integer:
                return "Int64" if self.has_missing else "int64"
            return "float64"
        kind = type(self.categories[0])
        if kind is str:
            return "str"
        if kind is bool:
            return "boolean" if self.has_missing else "bool"
        if kind is int:
            return "Int64" if self.has_missing else "int64"
        return "float64"

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form, so a schema can travel to the other party without pickle."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "role": self.role.value,
            "integer": self.integer,
            "has_missing": self.has_missing,
            "categories": list(self.categories),
        }


def _check_categories(name: str, categories: tuple[Category, ...]) -> None:
    if not isinstance(categories, tuple) or not categories:
        raise _invalid(f"categorical column '{name}' needs a non-empty tuple of categories")
    kinds = {type(value) for value in categories}
    if len(kinds) != 1 or next(iter(kinds)) not in _CATEGORY_TYPES:
        raise _invalid(
            f"categories of column '{name}' must all be str, all int, all float or all bool"
        )
    if any(isinstance(value, float) and not np.isfinite(value) for value in categories):
        raise _invalid(f"categories of column '{name}' must be finite numbers")
    if list(categories) != sorted(set(categories)):
        raise _invalid(f"categories of column '{name}' must be unique and sorted")


@dataclass(frozen=True, kw_only=True)
class TableSchema:
    """The agreed shape of a table: columns in file order, the two special roles, the NA token.

    ``positive_class`` is the target value counted as the favourable outcome by fairness metrics;
    ``missing_token`` is how the source CSV spelled a missing value and is written back on output.
    """

    columns: tuple[ColumnSpec, ...]
    target: str
    sensitive: str
    positive_class: Category
    missing_token: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.columns, tuple) or not all(
            isinstance(spec, ColumnSpec) for spec in self.columns
        ):
            raise _invalid("schema columns must be a tuple of ColumnSpec")
        names = [spec.name for spec in self.columns]
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise _invalid(f"schema repeats column(s) {', '.join(duplicates)}")
        if self.target == self.sensitive:
            raise _invalid(f"target and sensitive are the same column '{self.target}'")
        for name, role in (
            (self.target, ColumnRole.TARGET),
            (self.sensitive, ColumnRole.SENSITIVE),
        ):
            holders = [spec.name for spec in self.columns if spec.role is role]
            if holders != [name]:
                raise _invalid(f"schema must mark exactly '{name}' as {role.value}, not {holders}")
        target = self.column(self.target)
        if len(target.categories) != 2:
            raise _invalid(f"target '{self.target}' must have exactly 2 categories")
        if not _contains(target.categories, self.positive_class):
            raise _invalid(
                f"positive_class {self.positive_class!r} is not a value of target "
                f"'{self.target}' {list(target.categories)}"
            )
        if len(self.column(self.sensitive).categories) < 2:
            raise _invalid(f"sensitive '{self.sensitive}' must have at least 2 categories")
        if not isinstance(self.missing_token, str) or "\n" in self.missing_token:
            raise _invalid(f"missing_token {self.missing_token!r} must be a one-line string")

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in the original file order, the order every output table uses."""
        return tuple(spec.name for spec in self.columns)

    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """The columns that are neither target nor sensitive, in file order."""
        return tuple(spec for spec in self.columns if spec.role is ColumnRole.FEATURE)

    @property
    def target_column(self) -> ColumnSpec:
        """The spec of the binary target, whose two categories fairness compares."""
        return self.column(self.target)

    @property
    def sensitive_column(self) -> ColumnSpec:
        """The spec of the sensitive column, whose groups fairness compares."""
        return self.column(self.sensitive)

    def column(self, name: str) -> ColumnSpec:
        """Look a column up by name, failing with the catalogued error a user can act on."""
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, _unknown_column(name, self.names))

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form, so the schema can be stored beside a model and sent to a consumer."""
        return {
            "version": SCHEMA_VERSION,
            "columns": [spec.to_dict() for spec in self.columns],
            "target": self.target,
            "sensitive": self.sensitive,
            "positive_class": self.positive_class,
            "missing_token": self.missing_token,
        }

    @classmethod
    def from_dict(cls, data: object) -> TableSchema:
        """Rebuild a schema from ``to_dict`` output, rejecting anything damaged by field name."""
        obj = fields(
            data,
            "schema",
            {"version", "columns", "target", "sensitive", "positive_class", "missing_token"},
        )
        version = typed(obj, "version", int, "schema")
        if version != SCHEMA_VERSION:
            raise Fair4FreeError(
                ErrorCode.ARTIFACT_VERSION,
                f"schema version {version} is not the supported version {SCHEMA_VERSION}",
            )
        raw_columns = typed(obj, "columns", list, "schema")
        columns = tuple(
            _column_from_dict(item, f"schema.columns[{i}]") for i, item in enumerate(raw_columns)
        )
        if type(obj["positive_class"]) not in _CATEGORY_TYPES:
            raise corrupt("schema.positive_class", "must be a str, int, float or bool")
        positive = cast(Category, obj["positive_class"])
        try:
            return cls(
                columns=columns,
                target=typed(obj, "target", str, "schema"),
                sensitive=typed(obj, "sensitive", str, "schema"),
                positive_class=positive,
                missing_token=typed(obj, "missing_token", str, "schema"),
            )
        except Fair4FreeError as error:
            raise corrupt("schema", error.detail) from None


def _column_from_dict(data: object, where: str) -> ColumnSpec:
    obj = fields(data, where, {"name", "kind", "role", "integer", "has_missing", "categories"})
    kind_text = typed(obj, "kind", str, where)
    role_text = typed(obj, "role", str, where)
    try:
        kind = ColumnKind(kind_text)
    except ValueError:
        raise corrupt(f"{where}.kind", f"unknown kind {kind_text!r}") from None
    try:
        role = ColumnRole(role_text)
    except ValueError:
        raise corrupt(f"{where}.role", f"unknown role {role_text!r}") from None
    categories = typed(obj, "categories", list, where)
    if any(type(value) not in _CATEGORY_TYPES for value in categories):
        raise corrupt(f"{where}.categories", "values must be str, int, float or bool")
    try:
        return ColumnSpec(
            name=typed(obj, "name", str, where),
            kind=kind,
            role=role,
            integer=typed(obj, "integer", bool, where),
            has_missing=typed(obj, "has_missing", bool, where),
            categories=tuple(categories),
        )
    except Fair4FreeError as error:
        raise corrupt(where, error.detail) from None


def _contains(categories: Iterable[Category], value: object) -> bool:
    """Membership that also matches the type, so True never stands in for 1."""
    return any(type(item) is type(value) and item == value for item in categories)


def _unknown_column(name: str, available: Sequence[str]) -> str:
    shown = ", ".join(available[:8]) + (
        f", ... ({len(available)} columns)" if len(available) > 8 else ""
    )
    return f"column '{name}' is not in the table; available: {shown}"


def _python_value(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


# -- inference -------------------------------------------------------------------------------------


def infer_schema(
    df: pd.DataFrame,
    *,
    target: str,
    sensitive: str,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    positive_class: Category | None = None,
    missing_token: str = "",
) -> TableSchema:
    """Work out the schema of a table so that its rows can later be reproduced exactly.

    Text, boolean and pandas categorical columns are categorical, number columns numeric, unless
    named in ``categorical`` or ``numeric``; target and sensitive are always categorical. When
    ``positive_class`` is not given it is 1 (or True) for a target whose values are {0, 1} (or
    {False, True}), otherwise the less frequent target value (the later in sorted order on a tie),
    which for most decision data is the favourable outcome. A ``positive_class`` given as text
    (from a command line) also matches a number or boolean value spelled that way, e.g. "1".
    """
    if target == sensitive:
        raise _invalid(f"target and sensitive must differ, both are '{target}'")
    available = [str(name) for name in df.columns]
    if not all(isinstance(name, str) for name in df.columns):
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, "column names must all be strings")
    repeated = sorted(name for name, count in Counter(available).items() if count > 1)
    if repeated:
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, f"column '{repeated[0]}' repeats")
    for name in (target, sensitive, *categorical, *numeric):
        if name not in available:
            raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, _unknown_column(name, available))
    both = sorted(set(categorical) & set(numeric))
    if both:
        raise _invalid(f"column '{both[0]}' is declared both categorical and numeric")
    forced = sorted({target, sensitive} & set(numeric))
    if forced:
        raise _invalid(f"column '{forced[0]}' is the target or sensitive and must be categorical")
    columns = tuple(
        _infer_column(df[name], name, _role(name, target, sensitive), categorical, numeric)
        for name in available
    )
    target_spec = next(spec for spec in columns if spec.name == target)
    return TableSchema(
        columns=columns,
        target=target,
        sensitive=sensitive,
        positive_class=_positive_class(df[target], target_spec, positive_class),
        missing_token=missing_token,
    )


def _role(name: str, target: str, sensitive: str) -> ColumnRole:
    if name == target:
        return ColumnRole.TARGET
    return ColumnRole.SENSITIVE if name == sensitive else ColumnRole.FEATURE


def _infer_column(
    series: pd.Series,
    name: str,
    role: ColumnRole,
    categorical: Sequence[str],
    numeric: Sequence[str],
) -> ColumnSpec:
    missing = bool(series.isna().any())
    if bool(series.isna().all()):
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, f"column '{name}' has no values at all")
    is_number = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    as_numeric = name in numeric or (
        is_number and role is ColumnRole.FEATURE and name not in categorical
    )
    if as_numeric:
        if not is_number:
            raise Fair4FreeError(
                ErrorCode.COLUMN_UNSUPPORTED,
                f"column '{name}' holds {series.dtype} values and cannot be numeric",
            )
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        if bool(np.isinf(values).any()):
            raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, f"column '{name}' holds infinity")
        return ColumnSpec(
            name=name,
            kind=ColumnKind.NUMERIC,
            integer=pd.api.types.is_integer_dtype(series),
            has_missing=missing,
        )
    if role is not ColumnRole.FEATURE and missing:
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNSUPPORTED,
            f"{role.value} column '{name}' has {int(series.isna().sum())} missing value(s)",
        )
    return ColumnSpec(
        name=name,
        kind=ColumnKind.CATEGORICAL,
        role=role,
        has_missing=missing,
        categories=_infer_categories(series, name, role),
    )


def _infer_categories(series: pd.Series, name: str, role: ColumnRole) -> tuple[Category, ...]:
    count = int(series.nunique(dropna=True))
    if role is ColumnRole.TARGET and count != 2:
        raise Fair4FreeError(
            ErrorCode.TARGET_NOT_BINARY,
            f"target '{name}' has {count} distinct value(s), expected exactly 2",
        )
    if role is ColumnRole.SENSITIVE and count < 2:
        raise Fair4FreeError(
            ErrorCode.SENSITIVE_CONSTANT,
            f"sensitive column '{name}' has {count} distinct value(s), needs at least 2",
        )
    if count > MAX_CATEGORIES:
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNSUPPORTED,
            f"categorical column '{name}' has {count} distinct values, more than {MAX_CATEGORIES}",
        )
    values = [_python_value(value) for value in series.dropna().unique().tolist()]
    kinds = {type(value) for value in values}
    if len(kinds) != 1 or next(iter(kinds)) not in _CATEGORY_TYPES:
        found = ", ".join(sorted(kind.__name__ for kind in kinds))
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNSUPPORTED,
            f"column '{name}' mixes or holds unsupported value types ({found})",
        )
    if any(isinstance(value, float) and not np.isfinite(value) for value in values):
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, f"column '{name}' holds infinity")
    return tuple(sorted(cast(list[Any], values)))


def _positive_class(series: pd.Series, spec: ColumnSpec, requested: Category | None) -> Category:
    if requested is not None:
        value = _python_value(requested)
        if _contains(spec.categories, value):
            return cast(Category, value)
        spelled = [item for item in spec.categories if str(item) == value]
        if isinstance(value, str) and len(spelled) == 1:
            return spelled[0]
        raise _invalid(
            f"positive_class {requested!r} is not a value of target '{spec.name}' "
            f"{list(spec.categories)}"
        )
    if set(spec.categories) == {0, 1}:
        return next(value for value in spec.categories if value == 1)
    counts = series.value_counts()
    sizes = [int(counts[value]) for value in spec.categories]
    return spec.categories[1] if sizes[1] <= sizes[0] else spec.categories[0]
