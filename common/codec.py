"""The wire codec: the only place protobuf messages meet numpy arrays and domain types.

Every tensor that arrives is validated here, before any model sees it: dtype, rank, shape against
byte length, finiteness, row caps and (where the caller knows them) fixed trailing dimensions and
index bounds. A malformed tensor raises ``TENSOR_INVALID`` or ``ROW_CAP_EXCEEDED`` with a message
that says exactly which field is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


# Evaluate: a client stream of synthetic rows in, one aggregate report out.

EVALUATION_SECTIONS = ("fairness", "utility", "quality", "privacy")
"""The sections every Evaluate report holds, in this order."""

CHUNK_REQUEST_ID_CHANGED = "chunk {index}: request_id {got!r} differs from the first chunk's"
CHUNK_TOTAL_CHANGED = "chunk {index}: total_rows is {got}; only the first chunk sets it ({first})"
CHUNK_WITHOUT_ROWS = "chunk {index} carries no rows"
STREAM_TOO_LONG = "the stream carries more rows than its total_rows of {total}"
STREAM_TOO_SHORT = "the stream ended after {got} of its total_rows of {total} rows"
TOO_FEW_ROWS = (
    "total_rows: {rows} rows are fewer than the {least} an evaluation needs; "
    "fewer would make the scores describe single records"
)
REPORT_INVALID = "the owner's evaluation report {problem}"


@dataclass(frozen=True, kw_only=True)
class EvaluationAnswer:
    """What Evaluate returns: the report (sections of rounded aggregates) and two row counts."""

    report: Mapping[str, Any]
    rows_scored: int
    holdout_rows: int


def evaluate_chunks(
    rows: npt.NDArray[np.float32],
    sensitive: npt.NDArray[np.int64],
    *,
    request_id: str,
    chunk_rows: int,
) -> Iterator[pb.EvaluateChunk]:
    """The messages of one Evaluate call: ``chunk_rows`` rows each, ``total_rows`` on the first.

    A generator, so each attempt of a retried call sends the whole stream again from the start.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, rows.shape[0], chunk_rows):
        yield pb.EvaluateChunk(
            request_id=request_id,
            total_rows=rows.shape[0] if start == 0 else 0,
            rows=tensor_to_proto(rows[start : start + chunk_rows]),
            sensitive=tensor_to_proto(sensitive[start : start + chunk_rows]),
        )


def evaluate_rows_from_chunks(
    chunks: Iterable[pb.EvaluateChunk],
    *,
    width: int,
    n_groups: int,
    max_rows: int,
    min_rows: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Read and validate a whole Evaluate stream: rows float32 [total, width], sensitive [total].

    Every chunk is checked like a Decode request (dtype, shape, byte length, finite values,
    sensitive indices in ``[0, n_groups)``), carries at least one row and repeats the first
    chunk's request id. The first chunk's ``total_rows`` must lie in ``[min_rows, max_rows]``
    and the stream must carry exactly that many rows: reading stops at the first row too many,
    so an over-long stream is never buffered.

    :raises Fair4FreeError: REQUEST_INVALID, TENSOR_INVALID or ROW_CAP_EXCEEDED naming the chunk.
    """
    received: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
    request_id = ""
    total = got = 0
    for index, chunk in enumerate(chunks):
        if index == 0:
            request_id, total = chunk.request_id, int(chunk.total_rows)
            check_request_id(request_id)
            check_row_count(total, field="total_rows", cap=max_rows)
            if total < min_rows:
                detail = TOO_FEW_ROWS.format(rows=total, least=min_rows)
                raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
        elif chunk.request_id != request_id:
            detail = CHUNK_REQUEST_ID_CHANGED.format(index=index, got=chunk.request_id)
            raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
        elif chunk.total_rows not in (0, total):
            detail = CHUNK_TOTAL_CHANGED.format(index=index, got=chunk.total_rows, first=total)
            raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
        field = f"chunk {index}"
        rows = tensor_from_proto(
            chunk.rows, field=f"{field} rows", dtype="float32", shape=(None, width)
        )
        if rows.shape[0] == 0:
            raise Fair4FreeError(ErrorCode.REQUEST_INVALID, CHUNK_WITHOUT_ROWS.format(index=index))
        got += rows.shape[0]
        if got > total:
            raise Fair4FreeError(ErrorCode.REQUEST_INVALID, STREAM_TOO_LONG.format(total=total))
        sensitive = tensor_from_proto(
            chunk.sensitive, field=f"{field} sensitive", dtype="int64", shape=(rows.shape[0],)
        )
        check_index_bounds(sensitive, field=f"{field} sensitive", upper=n_groups)
        received.append((rows, sensitive))
    if got < total or not received:
        detail = STREAM_TOO_SHORT.format(got=got, total=total)
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
    return (
        np.concatenate([rows for rows, _ in received]),
        np.concatenate([sensitive for _, sensitive in received]),
    )


def evaluation_to_proto(answer: EvaluationAnswer) -> pb.EvaluateResponse:
    """Serialise an evaluation; the report travels as canonical JSON."""
    return pb.EvaluateResponse(
        report_json=canonical_json(answer.report),
        rows_scored=answer.rows_scored,
        holdout_rows=answer.holdout_rows,
    )


def evaluation_from_proto(message: pb.EvaluateResponse) -> EvaluationAnswer:
    """Decode an evaluation, refusing a report that is not a JSON object with every section."""
    try:
        report = json.loads(message.report_json)
    except json.JSONDecodeError as exc:
        detail = REPORT_INVALID.format(problem=f"is not JSON: {exc.msg}")
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail) from None
    if not isinstance(report, dict):
        detail = REPORT_INVALID.format(problem="is not a JSON object")
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
    missing = [name for name in EVALUATION_SECTIONS if not isinstance(report.get(name), dict)]
    if missing:
        detail = REPORT_INVALID.format(problem=f"lacks the sections {', '.join(missing)}")
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, detail)
    return EvaluationAnswer(
        report=report, rows_scored=message.rows_scored, holdout_rows=message.holdout_rows
    )
