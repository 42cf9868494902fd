"""The wire codec: the only place protobuf messages meet numpy arrays and domain types.

Every tensor that arrives is validated here, before any model sees it: dtype, rank, shape against
byte length, finiteness, row caps and (where the caller knows them) fixed trailing dimensions and
index bounds. A malformed tensor raises ``TENSOR_INVALID`` or ``ROW_CAP_EXCEEDED`` with a message
that says exactly which field is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.v1 import fair4free_pb2 as pb

WireDtype = Literal["float32", "int64"]

_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int64": np.dtype("<i8"),
}

MANIFEST_FORMAT_VERSION = 1

# Trailing-metadata key under which the owner returns its latest signed audit checkpoint with
# every answer; the consumer keeps them as its own evidence of the owner's log.
AUDIT_CHECKPOINT_TRAILER = "fair4free-audit-checkpoint"


def tensor_to_proto(array: npt.NDArray[Any]) -> pb.Tensor:
    """Serialise an array as little-endian bytes; refuses dtypes the protocol does not carry."""
    name = str(array.dtype)
    if name not in _NUMPY_DTYPES:
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, f"cannot send a tensor of dtype {name}")
    contiguous = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[name])
    return pb.Tensor(dtype=name, shape=list(contiguous.shape), data=contiguous.tobytes())


def tensor_from_proto(
    message: pb.Tensor,
    *,
    field: str,
    dtype: WireDtype,
    shape: Sequence[int | None],
    max_rows: int | None = None,
) -> npt.NDArray[Any]:
    """Decode and validate one tensor field.

    ``shape`` gives the expected rank; ``None`` marks a free dimension. The first dimension is the
    row count, checked against ``max_rows``. ``field`` names the message field in error messages.
    """
    if message.dtype != dtype:
        raise Fair4FreeError(
            ErrorCode.TENSOR_INVALID, f"{field}: dtype is {message.dtype!r}, expected {dtype!r}"
        )
    got_shape = tuple(message.shape)
    if len(got_shape) != len(shape):
        raise Fair4FreeError(
            ErrorCode.TENSOR_INVALID,
            f"{field}: rank is {len(got_shape)}, expected {len(shape)}",
        )
    if any(size < 0 for size in got_shape):
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, f"{field}: negative size in {got_shape}")
    for axis, (got, want) in enumerate(zip(got_shape, shape, strict=True)):
        if want is not None and got != want:
            raise Fair4FreeError(
                ErrorCode.TENSOR_INVALID,
                f"{field}: dimension {axis} is {got}, expected {want}",
            )
    if max_rows is not None and got_shape and got_shape[0] > max_rows:
        raise Fair4FreeError(
            ErrorCode.ROW_CAP_EXCEEDED, f"{field}: {got_shape[0]} rows exceed the cap of {max_rows}"
        )
    numpy_dtype = _NUMPY_DTYPES[dtype]
    expected_bytes = int(np.prod(got_shape, dtype=np.int64)) * numpy_dtype.itemsize
    if len(message.data) != expected_bytes:
        raise Fair4FreeError(
            ErrorCode.TENSOR_INVALID,
            f"{field}: {len(message.data)} bytes do not match shape {got_shape} "
            f"({expected_bytes} bytes)",
        )
    array = np.frombuffer(message.data, dtype=numpy_dtype).reshape(got_shape)
    if dtype == "float32" and not np.isfinite(array).all():
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, f"{field}: contains NaN or infinite values")
    return array.astype(numpy_dtype.newbyteorder("="), copy=True)


def check_index_bounds(indices: npt.NDArray[np.int64], *, field: str, upper: int) -> None:
    """Refuse category indices outside ``[0, upper)``; an index is a choice, not a number."""
    if indices.size and (indices.min() < 0 or indices.max() >= upper):
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, f"{field}: indices must lie in [0, {upper})")


MAX_REQUEST_ID_LENGTH = 128


def check_request_id(request_id: str) -> None:
    """Every request names itself, so a retry can be recognised and never charged twice."""
    if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise Fair4FreeError(
            ErrorCode.REQUEST_INVALID,
            f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters, got {len(request_id)}",
        )


def check_row_count(rows: int, *, field: str, cap: int) -> int:
    """A requested row count must be positive and within the per-call cap."""
    if rows < 1:
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, f"{field} must be at least 1, got {rows}")
    if rows > cap:
        raise Fair4FreeError(
            ErrorCode.ROW_CAP_EXCEEDED, f"{field}: {rows} rows exceed the cap of {cap}"
        )
    return rows


def canonical_json(value: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no whitespace, so equal content always hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class BudgetStatus:
    """One of the caller's row budgets: how many rows a method may still answer."""

    method: str
    limit: int
    remaining: int


@dataclass(frozen=True, kw_only=True)
class PrivacyGuarantee:
    """One differential-privacy guarantee the owner states for part of what it serves.

    ``scope`` is ``"teacher"`` (the weights: Decode answers are post-processing of them) or
    ``"latent_release"`` (every SampleLatents row released so far, to all callers together).
    """

    scope: str
    mechanism: str
    epsilon: float
    delta: float
    epsilon_limit: float
    adjacency: str


@dataclass(frozen=True, kw_only=True)
class ModelManifest:
    """What the owner declares about the served model: enough to distill it, nothing more."""

    format_version: int
    model_id: str
    content_hash: str
    encoding: Mapping[str, Any]
    latent_dim: int
    output_dim: int
    sensitive_marginal: tuple[float, ...]
    privacy_statement: str
    max_rows_per_call: int
    caller_identity: str = ""
    budgets: tuple[BudgetStatus, ...] = ()
    privacy_guarantees: tuple[PrivacyGuarantee, ...] = ()
    evaluation_available: bool = False


def manifest_to_proto(manifest: ModelManifest) -> pb.Manifest:
    """Serialise a manifest; the encoding travels as canonical JSON."""
    return pb.Manifest(
        format_version=manifest.format_version,
        model_id=manifest.model_id,
        content_hash=manifest.content_hash,
        encoding_json=canonical_json(manifest.encoding),
        latent_dim=manifest.latent_dim,
        output_dim=manifest.output_dim,
        sensitive_marginal=list(manifest.sensitive_marginal),
        privacy_statement=manifest.privacy_statement,
        max_rows_per_call=manifest.max_rows_per_call,
        caller_identity=manifest.caller_identity,
        budgets=[
            pb.Budget(method=b.method, limit=b.limit, remaining=b.remaining)
            for b in manifest.budgets
        ],
        privacy_guarantees=[
            pb.PrivacyGuarantee(
                scope=g.scope,
                mechanism=g.mechanism,
                epsilon=g.epsilon,
                delta=g.delta,
                epsilon_limit=g.epsilon_limit,
                adjacency=g.adjacency,
            )
            for g in manifest.privacy_guarantees
        ],
        evaluation_available=manifest.evaluation_available,
    )


def manifest_from_proto(message: pb.Manifest) -> ModelManifest:
    """Decode a manifest, refusing layouts from another protocol version."""
    if message.format_version != MANIFEST_FORMAT_VERSION:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_VERSION,
            f"the owner sent manifest format {message.format_version}, "
            f"this client reads format {MANIFEST_FORMAT_VERSION}",
        )
    try:
        encoding = json.loads(message.encoding_json)
    except json.JSONDecodeError as exc:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"manifest encoding_json is not JSON: {exc.msg}"
        ) from None
    if not isinstance(encoding, dict):
        raise Fair4FreeError(ErrorCode.ARTIFACT_CORRUPT, "manifest encoding_json is not an object")
    return ModelManifest(
        format_version=message.format_version,
        model_id=message.model_id,
        content_hash=message.content_hash,
        encoding=encoding,
        latent_dim=message.latent_dim,
        output_dim=message.output_dim,
        sensitive_marginal=tuple(message.sensitive_marginal),
        privacy_statement=message.privacy_statement,
        max_rows_per_call=message.max_rows_per_call,
        caller_identity=message.caller_identity,
        budgets=tuple(
            BudgetStatus(method=b.method, limit=b.limit, remaining=b.remaining)
            for b in message.budgets
        ),
        privacy_guarantees=tuple(
            PrivacyGuarantee(
                scope=g.scope,
                mechanism=g.mechanism,
                epsilon=g.epsilon,
                delta=g.delta,
                epsilon_limit=g.epsilon_limit,
                adjacency=g.adjacency,
            )
            for g in message.privacy_guarantees
        ),
        evaluation_available=message.evaluation_available,
    )
