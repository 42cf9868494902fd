"""The OwnerService servicer: decode the request, call one pure query, encode the answer.

Identity, error mapping and (later) policy, budgets and audit are interceptors; nothing here
knows about them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import numpy as np

from fair4free.common.codec import (
    check_index_bounds,
    check_request_id,
    check_row_count,
    manifest_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner import queries
from fair4free.data_owner.access import BudgetView
from fair4free.data_owner.registry import Teacher
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

LATENT_CHUNK_ROWS = 1024


class OwnerServicer(pb_grpc.OwnerServiceServicer):
    """Answers model queries against one loaded teacher."""

    def __init__(
        self,
        teacher: Teacher,
        *,
        budgets: BudgetView,
        max_rows_per_call: int,
        seed: int | None,
    ) -> None:
        self._teacher = teacher
        self._budgets = budgets
        self._max_rows = max_rows_per_call
        self._rng = np.random.default_rng(seed)
        self._manifest = queries.build_manifest(teacher, max_rows_per_call=max_rows_per_call)

    def GetManifest(  # noqa: N802 - gRPC method names are fixed by the proto
        self, request: pb.GetManifestRequest, context: grpc.ServicerContext
    ) -> pb.Manifest:
        """The model's manifest, with the caller's own identity, row cap and budgets left."""
        check_request_id(request.request_id)
        standing = self._budgets.standing(context)
        return manifest_to_proto(
            dataclasses.replace(
                self._manifest,
                caller_identity=standing.identity,
                max_rows_per_call=min(self._max_rows, standing.max_rows_per_call),
                budgets=standing.budgets,
            )
        )

    def SampleLatents(  # noqa: N802
        self, request: pb.SampleLatentsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LatentBatch]:
        """Streams posterior samples in chunks so large requests never build one huge message."""
        check_request_id(request.request_id)
        rows = check_row_count(request.rows, field="rows", cap=self._max_rows)
        latents = queries.sample_latents(self._teacher, rows, self._rng)
        for start in range(0, rows, LATENT_CHUNK_ROWS):
            yield pb.LatentBatch(
                latents=tensor_to_proto(latents[start : start + LATENT_CHUNK_ROWS])
            )

    def Decode(  # noqa: N802
        self, request: pb.DecodeRequest, context: grpc.ServicerContext
    ) -> pb.DecodeResponse:
        """Decoder outputs for latents and sensitive values the consumer chose."""
        check_request_id(request.request_id)
        config = self._teacher.model.config
        latents = tensor_from_proto(
            request.latents,
            field="latents",
            dtype="float32",
            shape=(None, config.latent_dim),
            max_rows=self._max_rows,
        )
        sensitive = tensor_from_proto(
            request.sensitive, field="sensitive", dtype="int64", shape=(latents.shape[0],)
        )
        check_index_bounds(sensitive, field="sensitive", upper=config.n_sensitive)
        outputs = queries.decode(self._teacher, latents, sensitive)
        return pb.DecodeResponse(outputs=tensor_to_proto(outputs))

    def Evaluate(  # noqa: N802
        self, request_iterator: Iterator[pb.EvaluateChunk], context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        """Owner-side scoring is not wired yet (issue 6); refuse plainly rather than hang."""
        raise Fair4FreeError(
            ErrorCode.EVALUATION_UNAVAILABLE, "this daemon does not serve Evaluate"
        )
