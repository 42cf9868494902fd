"""The table encoder: block layout, exact round trips through real files, and its failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fair4free.common.encoding import Block, TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.quantile_normal import QuantileNormal
from fair4free.common.schema import TableSchema, infer_schema
from fair4free.common.table_io import detect_missing_token, read_table, write_table


@contextmanager
def _raises(code: ErrorCode, match: str) -> Iterator[pytest.ExceptionInfo[Fair4FreeError]]:
    with pytest.raises(Fair4FreeError, match=match) as info:
        yield info
    assert info.value.code is code, info.value.code


def _awkward_csv(n: int = 600) -> str:
    """CSV text in exactly the spelling pandas writes, so a round trip can compare bytes."""
    rng = np.random.default_rng(7)
    lines = ["patient-id,age years,blood type,ward-code,dose,on-trial,sex,outcome"]
    for i in range(n):
        age = "?" if rng.random() < 0.1 else str(int(rng.integers(18, 95)))
        blood = "?" if rng.random() < 0.1 else str(rng.choice(["A pos", "B neg", "AB pos", "O"]))
        ward = f"ward {i % 300:03d}"
        dose = "?" if rng.random() < 0.1 else repr(float(rng.integers(0, 20)) * 0.25)
        trial = str(bool(rng.random() < 0.3))
        sex = str(rng.choice(["F", "M"]))
        outcome = str(rng.choice(["good", "poor outcome"]))
        lines.append(f"{i * 37},{age},{blood},{ward},{dose},{trial},{sex},{outcome}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def awkward(tmp_path: Path) -> tuple[Path, pd.DataFrame, TableSchema]:
    path = tmp_path / "awkward.csv"
    path.write_text(_awkward_csv())
    frame = read_table(path)
    schema = infer_schema(
        frame, target="outcome", sensitive="sex", missing_token=detect_missing_token(path)
    )
    return path, frame, schema


def _small() -> tuple[pd.DataFrame, TableSchema]:
    frame = pd.DataFrame(
        {
            "n": [1.0, 2.0, np.nan, 4.0, 8.0, 16.0],
            "c": ["x", "y", "x", None, "y", "x"],
            "k": [3, 1, 2, 3, 1, 2],
            "s": ["F", "M", "F", "M", "F", "F"],
            "t": ["no", "yes", "no", "yes", "no", "no"],
        }
    )
    return frame, infer_schema(frame, target="t", sensitive="s")


def test_csv_round_trip_is_byte_identical(
    awkward: tuple[Path, pd.DataFrame, TableSchema], tmp_path: Path
) -> None:
    path, frame, schema = awkward
    assert schema.missing_token == "?"
    assert len(schema.column("ward-code").categories) == 300
    encoder = TableEncoder.fit(frame, schema)
    decoded = encoder.decode(*encoder.encode(frame))
    pd.testing.assert_frame_equal(decoded, frame)
    assert str(decoded["age years"].dtype) == "Int64"
    assert str(decoded["patient-id"].dtype) == "int64"
    assert str(decoded["on-trial"].dtype) == "bool"
    out = tmp_path / "decoded.csv"
    write_table(decoded, out, schema)
    assert out.read_text() == path.read_text()


def test_round_trip_survives_json_and_sampling(
    awkward: tuple[Path, pd.DataFrame, TableSchema],
) -> None:
    _, frame, schema = awkward
    encoder = TableEncoder.fit(frame, schema)
    shipped = TableEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert shipped.to_dict() == encoder.to_dict()
    x, s = encoder.encode(frame)
    pd.testing.assert_frame_equal(shipped.decode(x, s, rng=np.random.default_rng(0)), frame)


def test_block_layout() -> None:
    frame, schema = _small()
    encoder = TableEncoder.fit(frame, schema)
    assert encoder.blocks == (
        Block(column="n", kind="numeric", start=0, stop=1),
        Block(column="n", kind="missing", start=1, stop=3),
        Block(column="c", kind="categorical", start=3, stop=6),
        Block(column="k", kind="numeric", start=6, stop=7),
        Block(column="t", kind="categorical", start=7, stop=9),
    )
    assert encoder.width == 9 and encoder.target_block.column == "t"
    assert encoder.sensitive_categories == ("F", "M")
    assert encoder.sensitive_marginal == pytest.approx((4 / 6, 2 / 6))
    x, s = encoder.encode(frame)
    assert x.dtype == np.float32 and x.shape == (6, 9)
    assert s.dtype == np.int64 and s.tolist() == [0, 1, 0, 1, 0, 0]
    assert x[:, 1:3].tolist()[2] == [0.0, 1.0] and x[:, 3:6].tolist()[3] == [0.0, 0.0, 1.0]
    assert (x[:, 7:9].sum(axis=1) == 1).all()


def test_float_columns_round_trip_within_interpolation() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(3, 1, 2000)
    frame = pd.DataFrame({"v": values, "s": ["a", "b"] * 1000, "t": [0, 1, 1, 0] * 500})
    encoder = TableEncoder.fit(frame, infer_schema(frame, target="t", sensitive="s"))
    decoded = encoder.decode(*encoder.encode(frame))
    np.testing.assert_allclose(decoded["v"], values, rtol=1e-5)
    assert not np.array_equal(decoded["v"], values)  # only knots are exact; documented


def test_decode_samples_in_proportion_to_scores() -> None:
    frame, schema = _small()
    encoder = TableEncoder.fit(frame, schema)
    n = 20_000
    x = np.zeros((n, encoder.width), dtype=np.float32)
    x[:, 1] = 1.0
    x[:, 3:6] = [0.2, 0.8, 0.0]
    x[:, 7:9] = 0.0  # all-zero scores: uniform
    s = np.zeros(n, dtype=np.int64)
    first = encoder.decode(x, s, rng=np.random.default_rng(5))
    again = encoder.decode(x, s, rng=np.random.default_rng(5))
    pd.testing.assert_frame_equal(first, again)
    assert (first["c"] == "y").mean() == pytest.approx(0.8, abs=0.02)
    assert first["c"].notna().all()
    assert (first["t"] == "yes").mean() == pytest.approx(0.5, abs=0.02)
    assert (encoder.decode(x, s)["c"] == "y").all()


def test_decode_clips_numeric_to_knot_range() -> None:
    frame, schema = _small()
    encoder = TableEncoder.fit(frame, schema)
    x, s = encoder.encode(frame)
    x[:, 0] = [-50, 50, 0, 0, 0, 0]
    x[:, 6] = [-50, 50, 0, 0, 0, 0]
    decoded = encoder.decode(x, s)
    assert decoded["n"].tolist()[:2] == [1.0, 16.0] and decoded["k"].tolist()[:2] == [1, 3]


def test_encode_errors() -> None:
    frame, schema = _small()
    encoder = TableEncoder.fit(frame, schema)
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"lacks column\(s\) of the schema: c, k"):
        encoder.encode(frame.drop(columns=["c", "k"]))
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"column 'c' has value 'zebra', unseen"):
        encoder.encode(frame.assign(c=["x", "zebra", "x", "y", "y", "x"]))
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"column 'k' has missing values"):
        encoder.encode(frame.assign(k=[1.0, np.nan, 2, 3, 1, 2]))
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"column 't' has missing values"):
        encoder.encode(frame.assign(t=["no", None, "no", "yes", "no", "no"]))
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"column 'n' must be numeric, found dtype str"):
        encoder.encode(frame.assign(n=list("abcdef")))
    with _raises(ErrorCode.SCHEMA_MISMATCH, r"column 's' has value 'X'"):
        encoder.encode(frame.assign(s=["X"] * 6))


def _tensors(encoder: TableEncoder) -> tuple[np.ndarray, np.ndarray]:
    frame, _ = _small()
    return encoder.encode(frame)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, s: (x[:, :-1], s), r"\[n, 9\] array, found \(6, 8\)"),
        (lambda x, s: (x[0], s), r"\[n, 9\] array, found \(9,\)"),
        (lambda x, s: (x.tolist(), s), r"found list"),
        (lambda x, s: (x.astype(np.int32), s), "float32 or float64, found int32"),
        (lambda x, s: (np.where(x == 0, np.nan, x), s), "NaN or infinite"),
        (lambda x, s: (x, s[:-1]), r"\[6\] array, found \(5,\)"),
        (lambda x, s: (x, s.astype(np.float32)), "must be integers, found float32"),
        (lambda x, s: (x, s + 1), r"in \[0, 2\), found 2"),
        (lambda x, s: (x, s - 1), r"in \[0, 2\)"),
        (lambda x, s: (x - 0.5, s), "missing block of column 'n' has negative scores"),
    ],
)
def test_decode_rejects_bad_tensors(change: Any, match: str) -> None:
    encoder = TableEncoder.fit(*_small())
    x, s = change(*_tensors(encoder))
    with _raises(ErrorCode.TENSOR_INVALID, match):
        encoder.decode(x, s)


def test_fit_rejects_bad_n_quantiles() -> None:
    with _raises(ErrorCode.CONFIG_INVALID, "n_quantiles must be an integer >= 2, not 1"):
        TableEncoder.fit(*_small(), n_quantiles=1)


def _state() -> dict[str, Any]:
    state: dict[str, Any] = json.loads(json.dumps(TableEncoder.fit(*_small()).to_dict()))
    return state


@pytest.mark.parametrize(
    ("edit", "code", "match"),
    [
        (lambda d: d.update(version=9), ErrorCode.ARTIFACT_VERSION, "encoding version 9"),
        (lambda d: d.pop("numeric"), ErrorCode.ARTIFACT_CORRUPT, r"encoding\.numeric: is missing"),
        (lambda d: d.update(extra=1), ErrorCode.ARTIFACT_CORRUPT, r"encoding\.extra"),
        (lambda d: d["numeric"].pop("k"), ErrorCode.ARTIFACT_CORRUPT, r"numeric\.k: is missing"),
        (
            lambda d: d["numeric"]["n"].update(knots=[3.0, 2.0, 1.0, 0.0, -1.0]),
            ErrorCode.ARTIFACT_CORRUPT,
            r"numeric\.n\.knots: must be strictly increasing",
        ),
        (
            lambda d: d["numeric"]["k"].update(scores=[0.0]),
            ErrorCode.ARTIFACT_CORRUPT,
            r"numeric\.k\.scores: must match the knots",
        ),
        (
            lambda d: d["numeric"]["n"].update(upto=list(reversed(d["numeric"]["n"]["upto"]))),
            ErrorCode.ARTIFACT_CORRUPT,
            r"numeric\.n\.upto: must give each knot a share interval",
        ),
        (
            lambda d: d["numeric"]["n"].pop("below"),
            ErrorCode.ARTIFACT_CORRUPT,
            r"numeric\.n\.below: is missing",
        ),
        (
            lambda d: d["numeric"]["k"].update(fill="x"),
            ErrorCode.ARTIFACT_CORRUPT,
            r"numeric\.k\.fill: must be a list of numbers",
        ),
        (
            lambda d: d.update(sensitive_marginal=[1.0]),
            ErrorCode.ARTIFACT_CORRUPT,
            r"sensitive_marginal: must give one probability per sensitive group",
        ),
        (
            lambda d: d["schema"].pop("target"),
            ErrorCode.ARTIFACT_CORRUPT,
            r"schema\.target: is missing",
        ),
        (lambda d: d.clear(), ErrorCode.ARTIFACT_CORRUPT, r"encoding\.version: is missing"),
    ],
)
def test_from_dict_rejects_damage(edit: Any, code: ErrorCode, match: str) -> None:
    state = _state()
    edit(state)
    with _raises(code, match):
        TableEncoder.from_dict(state)


_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(_floats, min_size=1, max_size=300), st.integers(2, 80))
def test_quantile_transform_is_monotone_and_invertible(values: list[float], n: int) -> None:
    data = np.array(values)
    transform = QuantileNormal.fit(data, n)
    knots, scores = np.array(transform.knots), np.array(transform.scores)
    assert len(knots) <= max(n, 1) and (np.diff(knots) > 0).all() and (np.diff(scores) > 0).all()
    assert knots[0] == data.min() and knots[-1] == data.max()
    ordered = np.sort(data)
    assert (np.diff(transform.forward(ordered)) >= 0).all()
    span = float(knots[-1] - knots[0])
    np.testing.assert_allclose(transform.inverse(transform.forward(data)), data, atol=1e-9 * span)
    via_float32 = transform.forward(knots).astype(np.float32).astype(np.float64)
    assert (transform.inverse(via_float32) == knots).all()  # knots survive a float32 model vector


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-100_000, 100_000), min_size=2, max_size=400))
def test_integer_columns_round_trip_exactly(values: list[int]) -> None:
    n = len(values)
    frame = pd.DataFrame(
        {"v": values, "s": (["a", "b"] * n)[:n], "t": ([0, 1, 1, 0] * n)[:n]}
    ).astype({"v": "int64"})
    frame.loc[0, "t"], frame.loc[1, "t"] = 0, 1
    encoder = TableEncoder.fit(frame, infer_schema(frame, target="t", sensitive="s"))
    pd.testing.assert_frame_equal(encoder.decode(*encoder.encode(frame)), frame)


def test_decoding_normal_scores_reproduces_a_column_with_a_point_mass() -> None:
    """Scores drawn from N(0, 1) decode to the column's own distribution, its spike included.

    Nine rows in ten hold 0 (like Adult's capital-gain): every score up to the 90th percentile
    decodes to exactly 0, where interpolating between the knots' middle scores decoded only the
    scores below the 45th percentile to 0 and the rest to values no row has.
    """
    rng = np.random.default_rng(0)
    values = np.where(rng.random(20_000) < 0.9, 0.0, np.round(rng.lognormal(8, 1, 20_000)))
    transform = QuantileNormal.fit(values, 64)
    decoded = transform.inverse(rng.standard_normal(50_000))
    assert np.mean(decoded == 0.0) == pytest.approx(np.mean(values == 0.0), abs=0.01)
    for q in (0.92, 0.95, 0.97, 0.99, 0.995):
        assert np.quantile(decoded, q) == pytest.approx(np.quantile(values, q), rel=0.05)
    assert transform.inverse(np.array([1.2]))[0] == 0.0  # blurred toward the spike: still 0


def test_spikes_take_one_knot_each_and_leave_the_rest_to_the_other_rows() -> None:
    """A column with shared values still gets its full number of knots, spread over the rest.

    Quantiles of all rows would put 58 of 64 levels on the 0 held by 90% of the rows, and
    collapse to a handful of knots; here 0 and 40 are knots and the remaining 62 are quantiles of
    the other rows, so the decoded tail is as fine as that of a column without the spikes.
    """
    rng = np.random.default_rng(1)
    tail = np.round(rng.lognormal(6, 1, 5_000))
    values = np.concatenate([np.zeros(40_000), np.full(5_000, 40.0), tail])
    transform = QuantileNormal.fit(values, 64)
    knots = np.asarray(transform.knots)
    assert len(knots) == 64 and {0.0, 40.0} <= set(knots) and set(knots) <= set(values)
    assert knots[-1] == values.max()
    others = np.sort(values[(values != 0.0) & (values != 40.0)])
    inner = knots[(knots != 0.0) & (knots != 40.0)]
    np.testing.assert_array_equal(
        inner, np.unique(np.quantile(others, np.linspace(0, 1, 62), method="inverted_cdf"))
    )


def test_a_version_1_encoding_loads_and_decodes_as_it_did() -> None:
    """Model directories written before the CDF shares keep decoding between middle scores."""
    state = _state()
    state["version"] = 1
    for numeric in state["numeric"].values():
        del numeric["below"], numeric["upto"]
    encoder = TableEncoder.from_dict(state)
    assert encoder.to_dict() == state  # written back as version 1, unchanged
    knots, middles = (np.asarray(state["numeric"]["n"][key]) for key in ("knots", "scores"))
    between = (middles[:-1] + middles[1:]) / 2
    transform = QuantileNormal.from_dict(state["numeric"]["n"], "n", with_shares=False)
    np.testing.assert_allclose(transform.inverse(between), np.interp(between, middles, knots))
    np.testing.assert_allclose(transform.forward(knots), middles)
