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
    evaluate_rows_from_chunks,
    evaluation_to_proto,
    manifest_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner import queries
from fair4free.data_owner.access import BudgetView
from fair4free.data_owner.latent_sources import LatentSource, PosteriorLatents
from fair4free.data_owner.owner_evaluation import OwnerEvaluator
from fair4free.data_owner.registry import Teacher
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

LATENT_CHUNK_ROWS = 1024
EVALUATION_NOT_SERVED = "this daemon was started without evaluation data"


class OwnerServicer(pb_grpc.OwnerServiceServicer):
    """Answers model queries against one loaded teacher."""

    def __init__(
        self,
        teacher: Teacher,
        *,
        budgets: BudgetView,
        max_rows_per_call: int,
        seed: int | None,
        latents: LatentSource | None = None,
        evaluator: OwnerEvaluator | None = None,
    ) -> None:
        self._teacher = teacher
        self._budgets = budgets
        self._max_rows = max_rows_per_call
        self._rng = np.random.default_rng(seed)
        self._latents = PosteriorLatents(teacher) if latents is None else latents
        self._evaluator = evaluator
        self._manifest = queries.build_manifest(
            teacher,
            max_rows_per_call=max_rows_per_call,
            latent_mode=self._latents.mode,
            evaluation_available=evaluator is not None,
        )

    def GetManifest(  # noqa: N802 - gRPC method names are fixed by the proto
        self, request: pb.GetManifestRequest, context: grpc.ServicerContext
    ) -> pb.Manifest:
        """The model's manifest, with the caller's own identity, row cap and budgets left."""
        check_request_id(request.request_id)
        standing = self._budgets.standing(context)
        manifest = queries.with_latent_release(
            self._manifest, latent_mode=self._latents.mode, release=self._latents.guarantee()
        )
        return manifest_to_proto(
            dataclasses.replace(
                manifest,
                caller_identity=standing.identity,
                max_rows_per_call=min(self._max_rows, standing.max_rows_per_call),
                budgets=standing.budgets,
            )
        )

    def SampleLatents(  # noqa: N802
        self, request: pb.SampleLatentsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LatentBatch]:
        """Streams latents of the configured release in chunks, never as one huge message."""
        check_request_id(request.request_id)
        rows = check_row_count(request.rows, field="rows", cap=self._max_rows)
        latents = self._latents.sample(rows, self._rng)
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
        """Aggregate scores of the streamed synthetic rows against the owner's hold-out."""
        if self._evaluator is None:
            raise Fair4FreeError(ErrorCode.EVALUATION_UNAVAILABLE, EVALUATION_NOT_SERVED)
        config = self._teacher.model.config
        rows, sensitive = evaluate_rows_from_chunks(
            request_iterator,
            width=config.input_dim,
            n_groups=config.n_sensitive,
            max_rows=self._max_rows,
            min_rows=self._evaluator.settings.min_rows,
        )
        return evaluation_to_proto(self._evaluator.score(rows, sensitive))
