"""The fitted map between a table and the model's vector space, and back again exactly.

The model vector holds, in schema order, every feature column and then the target (the last
block); the sensitive column is kept apart as an index into its categories, because the fair
model conditions on it rather than reconstructing it.

- A numeric column is one value: a quantile transform onto a standard normal. Its knots are
  observed values (every distinct value when there are at most ``n_quantiles`` of them; else
  each value many rows share, and quantiles of the rest), each holding the interval of normal
  scores its share of the rows spans; values in between are interpolated linearly, and decoding
  maps a knot's whole interval back to the knot and clips to the knot range. Scores are stored
  as float32 numbers, so a knot value survives a float32 model vector exactly; integer columns
  are rounded on decoding, which is exact while neighbouring knots are less than about 50,000
  apart.
- A numeric column with missing values adds a two-slot block (present, missing); the median
  stands in for a missing value in the numeric slot.
- A categorical column is a one-hot block, with a last slot for missing when it occurs.

Privacy note: the state (``to_dict``) reveals statistics of the training table, namely the
knots and their shares of the rows (including each numeric column's minimum, maximum and
median), every category seen and the sensitive groups' proportions. It is shared with the
consumer by design; do not fit it on data whose ranges are themselves secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.quantile_normal import FloatArray, QuantileNormal
from fair4free.common.schema import Category, ColumnKind, ColumnSpec, TableSchema
from fair4free.common.stored_state import corrupt, fields, float_list

ENCODING_VERSION = 2
"""Version 2 added each numeric knot's CDF shares (``QuantileNormal``); version 1 still loads."""
BlockKind = Literal["numeric", "categorical", "missing"]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class Block:
    """A slice ``[start, stop)`` of the model vector, so model heads know what each slot means."""

    column: str
    kind: BlockKind
    start: int
    stop: int

    @property
    def width(self) -> int:
        """Number of slots, which loss functions need to pick the right activation."""
        return self.stop - self.start


class TableEncoder:
    """The fitted, shareable transform that lets both parties read and write model vectors.

    Build it with ``fit`` on the owner's side and ship ``to_dict()`` to the consumer, who rebuilds
    it with ``from_dict`` and decodes model outputs into rows of the original schema.
    """

    def __init__(
        self,
        schema: TableSchema,
        transforms: Mapping[str, QuantileNormal],
        sensitive_marginal: Sequence[float],
    ) -> None:
        self._schema = schema
        self._transforms = dict(transforms)
        self._marginal = tuple(float(p) for p in sensitive_marginal)
        self._blocks = _layout(schema)

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: TableSchema, *, n_quantiles: int = 64) -> TableEncoder:
        """Learn the numeric transforms and p(s) from the training table."""
        if isinstance(n_quantiles, bool) or not isinstance(n_quantiles, int) or n_quantiles < 2:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"n_quantiles must be an integer >= 2, not {n_quantiles}"
            )
        _require_columns(df, schema)
        transforms: dict[str, QuantileNormal] = {}
        for spec in schema.feature_columns:
            if spec.kind is ColumnKind.NUMERIC:
                values = _numeric_values(df[spec.name], spec)
                observed = values[~np.isnan(values)]
                if observed.size == 0:
                    raise Fair4FreeError(
                        ErrorCode.COLUMN_UNSUPPORTED, f"column '{spec.name}' has no values at all"
                    )
                transforms[spec.name] = QuantileNormal.fit(observed, n_quantiles)
        s = _category_codes(df[schema.sensitive], schema.sensitive_column)
        counts = np.bincount(s, minlength=len(schema.sensitive_column.categories))
        marginal = counts / max(1, len(s))
        return cls(schema, transforms, [float(p) for p in marginal])

    @property
    def schema(self) -> TableSchema:
        """The schema decoded rows follow."""
        return self._schema

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The model vector's slices in order; the target block is last."""
        return self._blocks

    @property
    def width(self) -> int:
        """Length of one model vector."""
        return self._blocks[-1].stop

    @property
    def target_block(self) -> Block:
        """The target's one-hot block, which fairness losses read."""
        return self._blocks[-1]

    @property
    def sensitive_categories(self) -> tuple[Category, ...]:
        """The sensitive groups, in the order of the indices ``encode`` returns."""
        return self._schema.sensitive_column.categories

    @property
    def sensitive_marginal(self) -> tuple[float, ...]:
        """p(s) in the fit data, so a consumer can sample groups in their real proportions."""
        return self._marginal

    def encode(self, df: pd.DataFrame) -> tuple[npt.NDArray[np.float32], IndexArray]:
        """Turn a table into model vectors (float32 [n, width]) and sensitive indices (int64)."""
        _require_columns(df, self._schema)
        n = len(df)
        rows = np.arange(n)
        x = np.zeros((n, self.width), dtype=np.float32)
        for block in self._blocks:
            spec = self._schema.column(block.column)
            if block.kind == "numeric":
                values = _numeric_values(df[spec.name], spec)
                missing = np.isnan(values)
                transform = self._transforms[spec.name]
                x[:, block.start] = transform.forward(np.where(missing, transform.fill, values))
            elif block.kind == "missing":
                x[rows, block.start + np.isnan(_numeric_values(df[spec.name], spec))] = 1.0
            else:
                x[rows, block.start + _category_codes(df[spec.name], spec)] = 1.0
        s = _category_codes(df[self._schema.sensitive], self._schema.sensitive_column)
        return x, s

    def decode(
        self,
        x: npt.NDArray[np.floating],
        s: npt.NDArray[np.integer],
        *,
        rng: np.random.Generator | None = None,
    ) -> pd.DataFrame:
        """Turn model vectors and sensitive indices back into rows of the original schema.

        Categorical and missing blocks hold non-negative scores (such as probabilities): the
        largest wins when ``rng`` is None, otherwise a slot is drawn in proportion to the scores
        (uniformly when they are all zero). Numeric slots are inverse-transformed.
        """
        x, s = self._check_tensors(x, s)
        columns: dict[str, pd.Series] = {}
        chosen: dict[str, IndexArray] = {}
        for block in self._blocks:
            piece = x[:, block.start : block.stop]
            if block.kind != "numeric":
                chosen[block.column] = _choose(piece, rng)
        for block in self._blocks:
            spec = self._schema.column(block.column)
            if block.kind == "numeric":
                missing = chosen[spec.name] == 1 if spec.has_missing else None
                values = self._transforms[spec.name].inverse(x[:, block.start])
                columns[spec.name] = _numeric_series(spec, values, missing)
            elif block.kind == "categorical":
                columns[spec.name] = _category_series(spec, chosen[spec.name])
        columns[self._schema.sensitive] = _category_series(self._schema.sensitive_column, s)
        return pd.DataFrame({name: columns[name] for name in self._schema.names})

    def _check_tensors(self, x: object, s: object) -> tuple[FloatArray, IndexArray]:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.width:
            shape = getattr(x, "shape", type(x).__name__)
            raise _tensor(f"model vectors must be a [n, {self.width}] array, found {shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise _tensor(f"model vectors must be float32 or float64, found {x.dtype}")
        if not isinstance(s, np.ndarray) or s.shape != (x.shape[0],):
            shape = getattr(s, "shape", type(s).__name__)
            raise _tensor(f"sensitive indices must be a [{x.shape[0]}] array, found {shape}")
        if not np.issubdtype(s.dtype, np.integer):
            raise _tensor(f"sensitive indices must be integers, found {s.dtype}")
        values = x.astype(np.float64)
        if not np.isfinite(values).all():
            raise _tensor("model vectors hold NaN or infinite values")
        n_groups = len(self.sensitive_categories)
        if s.size and (int(s.min()) < 0 or int(s.max()) >= n_groups):
            raise _tensor(f"sensitive indices must lie in [0, {n_groups}), found {int(s.max())}")
        for block in self._blocks:
            if block.kind != "numeric" and (values[:, block.start : block.stop] < 0).any():
                raise _tensor(f"{block.kind} block of column '{block.column}' has negative scores")
        return values, s.astype(np.int64)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe state including the schema, so the consumer can decode without the data."""
        legacy = any(not t.below for t in self._transforms.values())  # read from version 1
        return {
            "version": 1 if legacy else ENCODING_VERSION,
            "schema": self._schema.to_dict(),
            "numeric": {name: t.to_dict() for name, t in self._transforms.items()},
            "sensitive_marginal": list(self._marginal),
        }

    @classmethod
    def from_dict(cls, data: object) -> TableEncoder:
        """Rebuild an encoder from ``to_dict`` output, rejecting damage by field name."""
        obj = fields(data, "encoding", ("version", "schema", "numeric", "sensitive_marginal"))
        version = obj["version"]
        if version not in (1, ENCODING_VERSION) or isinstance(version, bool):
            raise Fair4FreeError(
                ErrorCode.ARTIFACT_VERSION,
                f"encoding version {version!r} is not a supported one (1 to {ENCODING_VERSION})",
            )
        schema = TableSchema.from_dict(obj["schema"])
        numeric = [s.name for s in schema.feature_columns if s.kind is ColumnKind.NUMERIC]
        states = fields(obj["numeric"], "encoding.numeric", tuple(numeric))
        transforms = {
            name: QuantileNormal.from_dict(
                states[name], f"encoding.numeric.{name}", with_shares=version != 1
            )
            for name in numeric
        }
        marginal = float_list(obj["sensitive_marginal"], "encoding.sensitive_marginal")
        if len(marginal) != len(schema.sensitive_column.categories) or any(p < 0 for p in marginal):
            raise corrupt(
                "encoding.sensitive_marginal", "must give one probability per sensitive group"
            )
        return cls(schema, transforms, marginal)


def _layout(schema: TableSchema) -> tuple[Block, ...]:
    blocks: list[Block] = []
    start = 0

    def add(column: str, kind: BlockKind, width: int) -> None:
        nonlocal start
        blocks.append(Block(column=column, kind=kind, start=start, stop=start + width))
        start += width

    for spec in (*schema.feature_columns, schema.target_column):
        if spec.kind is ColumnKind.NUMERIC:
            add(spec.name, "numeric", 1)
            if spec.has_missing:
                add(spec.name, "missing", 2)
        else:
            add(spec.name, "categorical", len(spec.categories) + int(spec.has_missing))
    return tuple(blocks)


def _require_columns(df: pd.DataFrame, schema: TableSchema) -> None:
    absent = [name for name in schema.names if name not in df.columns]
    if absent:
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH, f"table lacks column(s) of the schema: {', '.join(absent)}"
        )


def _numeric_values(series: pd.Series, spec: ColumnSpec) -> FloatArray:
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if not numeric:
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH,
            f"column '{spec.name}' must be numeric, found dtype {series.dtype}",
        )
    values = cast(FloatArray, series.to_numpy(dtype="float64", na_value=np.nan))
    if np.isinf(values).any():
        raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, f"column '{spec.name}' holds infinity")
    if not spec.has_missing and np.isnan(values).any():
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH,
            f"column '{spec.name}' has missing values, which its schema does not allow",
        )
    return values


def _category_codes(series: pd.Series, spec: ColumnSpec) -> IndexArray:
    """Slot index per row: a category's position, or the missing slot after them."""
    codes = np.asarray(pd.Index(list(spec.categories)).get_indexer(series), dtype=np.int64)
    absent = series.isna().to_numpy(dtype=bool)
    unseen = (codes < 0) & ~absent
    if unseen.any():
        value = series[unseen].iloc[0]
        raise Fair4FreeError(
            ErrorCode.SCHEMA_MISMATCH,
            f"column '{spec.name}' has value {value!r}, unseen when the encoder was fitted",
        )
    if absent.any():
        if not spec.has_missing:
            raise Fair4FreeError(
                ErrorCode.SCHEMA_MISMATCH,
                f"column '{spec.name}' has missing values, which its schema does not allow",
            )
        codes[absent] = len(spec.categories)
    return codes


def _choose(scores: FloatArray, rng: np.random.Generator | None) -> IndexArray:
    if rng is None:
        return np.asarray(np.argmax(scores, axis=1), dtype=np.int64)
    totals = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / scores.shape[1])
    probs = np.where(totals > 0, scores / np.where(totals > 0, totals, 1.0), uniform)
    draws = rng.random(len(scores))[:, None]
    picked = (np.cumsum(probs, axis=1) < draws).sum(axis=1)
    return np.asarray(np.minimum(picked, scores.shape[1] - 1), dtype=np.int64)


def _category_series(spec: ColumnSpec, codes: IndexArray) -> pd.Series:
    table = np.array([*spec.categories, None], dtype=object)
    return pd.Series(table[codes], dtype=spec.dtype)


def _numeric_series(
    spec: ColumnSpec, values: FloatArray, missing: npt.NDArray[np.bool_] | None
) -> pd.Series:
    if spec.integer:
        whole = np.rint(values).astype(np.int64)
        if missing is None:
            return pd.Series(whole, dtype="int64")
        return pd.Series(pd.arrays.IntegerArray(whole, missing.copy()))
    if missing is not None:
        values = np.where(missing, np.nan, values)
    return pd.Series(values, dtype="float64")


def _tensor(detail: str) -> Fair4FreeError:
    return Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
