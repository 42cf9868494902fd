import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fair4free.common.codec import (
    MANIFEST_FORMAT_VERSION,
    BudgetStatus,
    ModelManifest,
    PrivacyGuarantee,
    check_index_bounds,
    check_request_id,
    check_row_count,
    manifest_from_proto,
    manifest_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.v1 import fair4free_pb2 as pb

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3), elements=finite_floats))
def test_float_tensor_round_trip(array: np.ndarray) -> None:
    message = tensor_to_proto(array)
    decoded = tensor_from_proto(message, field="x", dtype="float32", shape=[None] * array.ndim)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.float32


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.int64, st.integers(0, 50), elements=st.integers(-(2**40), 2**40)))
def test_int_tensor_round_trip(array: np.ndarray) -> None:
    decoded = tensor_from_proto(tensor_to_proto(array), field="s", dtype="int64", shape=[None])
    np.testing.assert_array_equal(decoded, array)


def test_bytes_are_little_endian() -> None:
    message = tensor_to_proto(np.array([1], dtype=np.int64))
    assert message.data == (1).to_bytes(8, "little")


def _tensor(dtype: str, shape: list[int], data: bytes) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


@pytest.mark.parametrize(
    ("message", "shape", "max_rows", "code", "match"),
    [
        (_tensor("float64", [1, 2], b"\0" * 16), (None, 2), None, ErrorCode.TENSOR_INVALID,
         "x: dtype is 'float64', expected 'float32'"),
        (_tensor("float32", [2], b"\0" * 8), (None, 2), None, ErrorCode.TENSOR_INVALID,
         "x: rank is 1, expected 2"),
        (_tensor("float32", [1, 3], b"\0" * 12), (None, 2), None, ErrorCode.TENSOR_INVALID,
         "x: dimension 1 is 3, expected 2"),
        (_tensor("float32", [2, 2], b"\0" * 12), (None, 2), None, ErrorCode.TENSOR_INVALID,
         r"x: 12 bytes do not match shape \(2, 2\) \(16 bytes\)"),
        (_tensor("float32", [-1, 2], b""), (None, 2), None, ErrorCode.TENSOR_INVALID,
         "x: negative size"),
        (_tensor("float32", [5, 2], b"\0" * 40), (None, 2), 4, ErrorCode.ROW_CAP_EXCEEDED,
         "x: 5 rows exceed the cap of 4"),
        (tensor_to_proto(np.array([[np.nan, 1.0]], dtype=np.float32)), (None, 2), None,
         ErrorCode.TENSOR_INVALID, "x: contains NaN or infinite values"),
        (tensor_to_proto(np.array([[np.inf, 1.0]], dtype=np.float32)), (None, 2), None,
         ErrorCode.TENSOR_INVALID, "x: contains NaN or infinite values"),
    ],
)  # fmt: skip
def test_invalid_tensors_are_refused_with_the_reason(
    message: pb.Tensor,
    shape: tuple[int | None, ...],
    max_rows: int | None,
    code: ErrorCode,
    match: str,
) -> None:
    with pytest.raises(Fair4FreeError, match=match) as caught:
        tensor_from_proto(message, field="x", dtype="float32", shape=shape, max_rows=max_rows)
    assert caught.value.code is code


def test_unsupported_dtype_cannot_be_sent() -> None:
    with pytest.raises(Fair4FreeError, match="cannot send a tensor of dtype float64") as caught:
        tensor_to_proto(np.zeros(2, dtype=np.float64))
    assert caught.value.code is ErrorCode.TENSOR_INVALID


def test_index_bounds() -> None:
    check_index_bounds(np.array([0, 1], dtype=np.int64), field="s", upper=2)
    with pytest.raises(Fair4FreeError, match=r"s: indices must lie in \[0, 2\)"):
        check_index_bounds(np.array([0, 2], dtype=np.int64), field="s", upper=2)
    with pytest.raises(Fair4FreeError, match=r"s: indices must lie in \[0, 2\)"):
        check_index_bounds(np.array([-1], dtype=np.int64), field="s", upper=2)


def test_request_id_and_row_count_checks() -> None:
    check_request_id("abc")
    with pytest.raises(Fair4FreeError, match="request_id must be 1 to 128 characters, got 0"):
        check_request_id("")
    with pytest.raises(Fair4FreeError, match="request_id must be 1 to 128 characters, got 129"):
        check_request_id("x" * 129)
    assert check_row_count(3, field="rows", cap=3) == 3
    with pytest.raises(Fair4FreeError, match="rows must be at least 1, got 0"):
        check_row_count(0, field="rows", cap=3)
    with pytest.raises(Fair4FreeError, match="rows: 4 rows exceed the cap of 3") as caught:
        check_row_count(4, field="rows", cap=3)
    assert caught.value.code is ErrorCode.ROW_CAP_EXCEEDED


def _manifest() -> ModelManifest:
    return ModelManifest(
        format_version=MANIFEST_FORMAT_VERSION,
        model_id="cohort-abc",
        content_hash="ab" * 32,
        encoding={"b": [1, 2], "a": {"x": "y"}},
        latent_dim=8,
        output_dim=21,
        sensitive_marginal=(0.25, 0.75),
        privacy_statement="none",
        max_rows_per_call=4096,
        caller_identity="fair4free://consumer/acme",
        budgets=(BudgetStatus(method="Decode", limit=100, remaining=40),),
        privacy_guarantees=(
            PrivacyGuarantee(
                scope="teacher",
                mechanism="dp-sgd",
                epsilon=7.9,
                delta=1e-5,
                epsilon_limit=7.9,
                adjacency="add or remove one record",
            ),
        ),
        evaluation_available=True,
    )


def test_manifest_round_trip() -> None:
    assert manifest_from_proto(manifest_to_proto(_manifest())) == _manifest()


def test_manifest_encoding_is_canonical_json() -> None:
    assert manifest_to_proto(_manifest()).encoding_json == '{"a":{"x":"y"},"b":[1,2]}'


def test_manifest_of_another_version_is_refused() -> None:
    message = manifest_to_proto(_manifest())
    message.format_version = MANIFEST_FORMAT_VERSION + 1
    with pytest.raises(Fair4FreeError, match="the owner sent manifest format 2") as caught:
        manifest_from_proto(message)
    assert caught.value.code is ErrorCode.ARTIFACT_VERSION


def test_manifest_with_broken_encoding_is_refused() -> None:
    message = manifest_to_proto(_manifest())
    message.encoding_json = "[1"
    with pytest.raises(Fair4FreeError, match="manifest encoding_json is not JSON"):
        manifest_from_proto(message)
    message.encoding_json = "[1]"
    with pytest.raises(Fair4FreeError, match="manifest encoding_json is not an object"):
        manifest_from_proto(message)
