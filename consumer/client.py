"""The consumer's connection to an owner daemon: mTLS, deadlines, retries, validated answers.

Every call carries a deadline and a fresh request id; a retry after a transient failure reuses the
id so the owner can recognise it. Answers are validated by the wire codec exactly as the server
validates requests: an owner that sends a malformed tensor gets no further than this module.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from fair4free.common.closing import ClosesOnExit
from fair4free.common.codec import (
    AUDIT_CHECKPOINT_TRAILER,
    EvaluationAnswer,
    ModelManifest,
    evaluate_chunks,
    evaluation_from_proto,
    manifest_from_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from fair4free.common.errors import CATALOG, ErrorCode, Fair4FreeError
from fair4free.common.tls import TlsFiles, channel_credentials
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

EVALUATE_CHUNK_ROWS = 4096
"""Rows per Evaluate message: 4096 rows of a few hundred columns stay far below 16 MiB."""

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_DAEMON_DEADLINE_HINT = f"; {CATALOG[ErrorCode.DEADLINE_EXCEEDED].hint}"
"""How the daemon's own deadline refusal ends (``deadline.py``); a client-side timeout does not."""
_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Where the owner is and how patiently to talk to it."""

    server: str
    tls: TlsFiles
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    attempts: int = 3
    max_message_bytes: int = 16 * 1024 * 1024


class OwnerClient(ClosesOnExit):
    """A typed client for OwnerService; use as a context manager so the channel is closed."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        credentials = channel_credentials(
            ca=config.tls.ca, cert=config.tls.cert, key=config.tls.key
        )
        self._channel = grpc.secure_channel(
            config.server,
            credentials,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
        )
        self._stub = pb_grpc.OwnerServiceStub(self._channel)
        self._manifest: ModelManifest | None = None
        self._checkpoints: list[str] = []

    def close(self) -> None:
        """Close the channel to the owner."""
        self._channel.close()

    def manifest(self) -> ModelManifest:
        """The owner's manifest, fetched once per client."""
        if self._manifest is None:
            message = self._call("GetManifest", self._manifest_once)
            self._manifest = manifest_from_proto(message)
        return self._manifest

    def _manifest_once(self, request_id: str) -> pb.Manifest:
        message, call = self._stub.GetManifest.with_call(
            pb.GetManifestRequest(request_id=request_id), timeout=self._config.timeout_seconds
        )
        self._keep_checkpoint(call)
        return message

    @property
    def audit_checkpoints(self) -> tuple[str, ...]:
        """Signed checkpoints of the owner's audit log that came back with answers, in order.

        The consumer's own evidence: the owner's ``audit verify --checkpoints`` fails if the log
        it shows later disagrees with any of them.
        """
        return tuple(self._checkpoints)

    def _keep_checkpoint(self, call: Any) -> None:
        for key, value in call.trailing_metadata() or ():
            if key == AUDIT_CHECKPOINT_TRAILER and value not in self._checkpoints[-1:]:
                self._checkpoints.append(str(value))

    def sample_latents(self, rows: int) -> npt.NDArray[np.float32]:
        """``rows`` teacher latents, fetched in calls of at most the manifest's row cap."""
        manifest = self.manifest()
        chunks = []
        for count in _split(rows, manifest.max_rows_per_call):
            chunks.append(self._call("SampleLatents", functools.partial(self._latents, rows=count)))
        return np.concatenate(chunks) if chunks else np.zeros((0, manifest.latent_dim), np.float32)

    def _latents(self, request_id: str, *, rows: int) -> npt.NDArray[np.float32]:
        latent_dim = self.manifest().latent_dim
        stream = self._stub.SampleLatents(
            pb.SampleLatentsRequest(request_id=request_id, rows=rows),
            timeout=self._config.timeout_seconds,
        )
        batches = [
            tensor_from_proto(
                batch.latents, field="latents", dtype="float32", shape=(None, latent_dim)
            )
            for batch in stream
        ]
        self._keep_checkpoint(stream)
        latents = np.concatenate(batches) if batches else np.zeros((0, latent_dim), np.float32)
        if latents.shape[0] != rows:
            raise Fair4FreeError(
                ErrorCode.TENSOR_INVALID,
                f"the owner sent {latents.shape[0]} latents, {rows} were asked for",
            )
        return latents

    def decode(
        self, latents: npt.NDArray[np.float32], sensitive: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Teacher decoder outputs for the given latents and sensitive indices."""
        manifest = self.manifest()
        outputs = []
        start = 0
        for count in _split(latents.shape[0], manifest.max_rows_per_call):
            part_z = latents[start : start + count]
            part_s = sensitive[start : start + count]
            start += count
            request = pb.DecodeRequest(
                latents=tensor_to_proto(part_z), sensitive=tensor_to_proto(part_s)
            )
            response = self._call("Decode", functools.partial(self._decode_once, request))
            outputs.append(
                tensor_from_proto(
                    response.outputs,
                    field="outputs",
                    dtype="float32",
                    shape=(count, manifest.output_dim),
                )
            )
        return np.concatenate(outputs)

    def _decode_once(self, request: pb.DecodeRequest, request_id: str) -> pb.DecodeResponse:
        request.request_id = request_id
        response, call = self._stub.Decode.with_call(request, timeout=self._config.timeout_seconds)
        self._keep_checkpoint(call)
        return response

    def evaluate(
        self,
        rows: npt.NDArray[np.float32],
        sensitive: npt.NDArray[np.int64],
        *,
        chunk_rows: int = EVALUATE_CHUNK_ROWS,
    ) -> EvaluationAnswer:
        """The owner's aggregate scores of model-space rows against its private hold-out.

        One call, since the scores are over the whole table: at most the manifest's rows per
        call, and at least the owner's minimum. Streamed in messages of ``chunk_rows`` rows; a
        retry sends the whole stream again under the same request id.
        """
        manifest = self.manifest()
        if not manifest.evaluation_available:
            raise Fair4FreeError(
                ErrorCode.EVALUATION_UNAVAILABLE, f"{self._config.server} does not serve Evaluate"
            )
        send = functools.partial(self._evaluate_once, rows, sensitive, chunk_rows)
        return self._call("Evaluate", send)

    def _evaluate_once(
        self,
        rows: npt.NDArray[np.float32],
        sensitive: npt.NDArray[np.int64],
        chunk_rows: int,
        request_id: str,
    ) -> EvaluationAnswer:
        chunks = evaluate_chunks(rows, sensitive, request_id=request_id, chunk_rows=chunk_rows)
        response, call = self._stub.Evaluate.with_call(chunks, timeout=self._config.timeout_seconds)
        self._keep_checkpoint(call)
        return evaluation_from_proto(response)

    def _call(self, method: str, send: Callable[[str], T]) -> T:
        """Send with one request id, retrying transient failures with backoff and jitter."""
        request_id = uuid.uuid4().hex
        for attempt in range(1, self._config.attempts + 1):
            try:
                return send(request_id)
            except grpc.RpcError as exc:
                code = exc.code()
                retryable = code in _RETRYABLE and not _daemon_deadline(exc)
                if retryable and attempt < self._config.attempts:
                    delay = min(4.0, 0.25 * 2**attempt) * (0.5 + random.random())
                    logger.warning("%s failed (%s); retrying in %.1f s", method, code.name, delay)
                    time.sleep(delay)
                    continue
                raise _as_domain_error(method, self._config.server, exc) from None
        raise AssertionError("unreachable: the loop returns or raises")


def _split(total: int, cap: int) -> list[int]:
    """Row counts of consecutive calls that each respect the cap."""
    return [min(cap, total - start) for start in range(0, total, cap)]


def _daemon_deadline(exc: grpc.RpcError) -> bool:
    """The daemon cut the call off at its --max-call-seconds: the same request would be again."""
    details = exc.details() or ""
    return exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and details.endswith(
        _DAEMON_DEADLINE_HINT
    )


def _as_domain_error(method: str, server: str, exc: grpc.RpcError) -> Fair4FreeError:
    code = exc.code()
    details = exc.details() or code.name
    if _daemon_deadline(exc):  # its hint says what to do; the error adds it back once
        reason = details.removesuffix(_DAEMON_DEADLINE_HINT)
        return Fair4FreeError(ErrorCode.DEADLINE_EXCEEDED, f"{server} cut {method} off: {reason}")
    if code in _RETRYABLE:
        return Fair4FreeError(
            ErrorCode.SERVER_UNREACHABLE, f"{method} to {server} failed: {code.name}: {details}"
        )
    if code in _REFUSALS:
        return Fair4FreeError(
            ErrorCode.SERVER_REFUSED, f"{server} refused {method}: {code.name}: {details}"
        )
    return Fair4FreeError(
        ErrorCode.REQUEST_INVALID, f"{server} rejected {method}: {code.name}: {details}"
    )
